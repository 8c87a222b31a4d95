"""The NeuralGS stages: importance (A), clustering (B), clustered MLP field (C), losses (D)."""

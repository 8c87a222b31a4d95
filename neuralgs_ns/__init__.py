"""NeuralGS for nerfstudio."""

from neuralgs_ns import _torch_compat  # noqa: F401  (nerfstudio checkpoints load on torch >= 2.6)

__version__ = "0.1.0"

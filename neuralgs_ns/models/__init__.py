"""nerfstudio models: PortableSplatfactoModel (splatfacto on CPU or CUDA) and NeuralGSModel."""

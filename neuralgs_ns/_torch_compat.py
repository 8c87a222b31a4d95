"""Lets torch >= 2.6 load nerfstudio 1.1.5 checkpoints with its default safe loading.

torch 2.6 made `torch.load` default to `weights_only=True`, which refuses any global outside
its allow-list. nerfstudio 1.1.5 computes learning rates with numpy
(`ExponentialDecayScheduler`), so its checkpoints carry numpy float64 scalars in the
optimiser and scheduler states, and `ns-viewer`, `ns-export`, `ns-eval` and resumed training
fail to load them. This allow-lists exactly what those scalars need; safe loading stays on for
everything else.

This is the package's one documented import-time change to another library (STYLE.md): it
runs when `neuralgs_ns` is imported, which nerfstudio does when it discovers the plugin's
entry points and when it reads a run's config.yml.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.torch_version import TorchVersion


def allow_numpy_scalars_in_checkpoints() -> None:
    """Adds numpy float64 scalars to `torch.load`'s weights-only allow-list (torch >= 2.6).

    A pickled numpy scalar is `scalar(dtype, bytes)`: it needs numpy's `scalar` constructor,
    `numpy.dtype` and the dtype's class (`numpy.dtypes.Float64DType`). The checkpoint names
    the constructor as the numpy that saved it did (`numpy._core.multiarray` in numpy 2,
    `numpy.core.multiarray` in numpy 1), so both names map to this numpy's function.
    """
    if TorchVersion(torch.__version__) < (2, 6):
        return  # weights_only=False was still the default
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar
    torch.serialization.add_safe_globals(
        [
            (scalar, "numpy._core.multiarray.scalar"),
            (scalar, "numpy.core.multiarray.scalar"),
            np.dtype,
            type(np.dtype(np.float64)),
        ]
    )


allow_numpy_scalars_in_checkpoints()

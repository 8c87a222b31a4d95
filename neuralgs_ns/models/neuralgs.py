"""NeuralGS as a nerfstudio model: a splatfacto teacher compressed into clustered neural fields.

Only the configuration exists so far, so that `ns-train neuralgs --help` documents the method;
the compression stages (importance, pruning, clustering, MLP fitting, fine-tuning) land with
their own issues.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Type

from neuralgs_ns.errors import NeuralGSError
from neuralgs_ns.models.portable_splatfacto import PortableSplatfactoModel, PortableSplatfactoModelConfig


class StageNotImplementedError(NeuralGSError):
    """A NeuralGS stage the user asked for is not implemented yet."""


@dataclass
class NeuralGSModelConfig(PortableSplatfactoModelConfig):
    """NeuralGS: compresses a trained splatfacto scene into per-cluster neural fields."""

    _target: Type = field(default_factory=lambda: NeuralGSModel)
    teacher: Optional[Path] = None
    """Trained scene to compress: a splatfacto .ckpt, its run directory or config.yml, or a 3DGS .ply."""


class NeuralGSModel(PortableSplatfactoModel):
    """Placeholder for the NeuralGS model; constructing it fails with a one-line message."""

    config: NeuralGSModelConfig

    def populate_modules(self):
        raise StageNotImplementedError(
            "ns-train neuralgs: the NeuralGS compression stages are not implemented yet; "
            "train a teacher with `ns-train splatfacto-portable` meanwhile"
        )

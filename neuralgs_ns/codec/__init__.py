"""What `neuralgs compress` writes and `neuralgs decode` reads.

PROVISIONAL container until the .ngs bitstream lands: a magic line followed by a
`torch.save` payload of plain tensors and numbers, so it loads with torch's safe
(weights_only) loader. Everything is float32, so decoding reproduces the trained model.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

import torch
from torch import Tensor

from neuralgs_ns.errors import InputFileError
from neuralgs_ns.gaussians import Gaussians
from neuralgs_ns.utils import atomic_write_bytes

MAGIC = b"NEURALGS-PROVISIONAL-0\n"


@dataclass
class CompressedScene:
    """Positions grouped by cluster, cluster labels, the attribute normalisation table and
    the per-cluster MLPs: all a decoder needs."""

    positions: Tensor  # [N, 3]
    labels: Tensor  # [N] int64, non-decreasing
    attribute_mins: Tensor  # [D]
    attribute_maxs: Tensor  # [D]
    field_state: Dict[str, Tensor]
    field_activation: str
    sh_degree: int

    @classmethod
    def from_model(cls, model) -> "CompressedScene":
        """From a trained `NeuralGSModel`."""
        return cls(model.positions.detach().cpu(), model.labels.detach().cpu(), model.attribute_mins.detach().cpu(),
                   model.attribute_maxs.detach().cpu(), {k: v.detach().cpu() for k, v in model.field.state_dict().items()},
                   model.config.field_activation, int(model.config.sh_degree))

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save({"positions": self.positions, "labels": self.labels, "attribute_mins": self.attribute_mins,
                    "attribute_maxs": self.attribute_maxs, "field": self.field_state,
                    "field_activation": self.field_activation, "sh_degree": self.sh_degree}, buf)
        return MAGIC + buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, path: Path) -> "CompressedScene":
        if not data.startswith(MAGIC):
            raise InputFileError(path, "not a neuralgs compressed file (wrong magic)")
        try:
            d = torch.load(io.BytesIO(data[len(MAGIC):]), map_location="cpu", weights_only=True)
            return cls(d["positions"], d["labels"], d["attribute_mins"], d["attribute_maxs"], d["field"],
                       str(d["field_activation"]), int(d["sh_degree"]))
        except Exception as err:
            raise InputFileError(path, f"corrupt or truncated ({type(err).__name__})") from None

    def save(self, path: Path) -> int:
        data = self.to_bytes()
        atomic_write_bytes(Path(path), data)
        return len(data)

    @classmethod
    def load(cls, path: Path) -> "CompressedScene":
        path = Path(path)
        if not path.is_file():
            raise InputFileError(path, "no such file")
        return cls.from_bytes(path.read_bytes(), path)

    def decode(self) -> Gaussians:
        from neuralgs_ns.compress.field import decode_gaussians, field_from_state_dict

        field = field_from_state_dict(self.field_state, self.field_activation)
        with torch.no_grad():
            return decode_gaussians(field, self.positions, self.labels, self.attribute_mins, self.attribute_maxs,
                                    self.sh_degree)

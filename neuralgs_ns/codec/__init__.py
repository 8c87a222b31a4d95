"""What `neuralgs compress` writes and `neuralgs decode` reads.

PROVISIONAL container until the .ngs bitstream lands: a magic line followed by a
`torch.save` payload of plain tensors and numbers, so it loads with torch's safe
(weights_only) loader. Positions are stored as 16-bit grid codes (`quantize.position_grid`),
clusters as their sizes, MLP weights as float16: the model trains on exactly these values
(snapped positions, float16-rounded weights), so decoding reproduces it bit for bit.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

import torch
from torch import Tensor

from neuralgs_ns.codec.quantize import dequantize_positions, quantize_positions
from neuralgs_ns.errors import InputFileError, NeuralGSError
from neuralgs_ns.gaussians import Gaussians
from neuralgs_ns.utils import atomic_write_bytes

MAGIC = b"NEURALGS-PROVISIONAL-1\n"


@dataclass
class CompressedScene:
    """Positions grouped by cluster, cluster labels, the attribute normalisation table and
    the per-cluster MLPs: all a decoder needs."""

    positions: Tensor  # [N, 3], on position_grid
    labels: Tensor  # [N] int64, non-decreasing
    position_grid: Tensor  # [2, 3] origin and step
    attribute_mins: Tensor  # [D]
    attribute_maxs: Tensor  # [D]
    field_state: Dict[str, Tensor]
    field_activation: str
    sh_degree: int

    @classmethod
    def from_model(cls, model) -> "CompressedScene":
        """From a trained `NeuralGSModel`."""
        if model.config.field_precision != "float16":
            raise NeuralGSError("only float16 MLP weights can be stored (--pipeline.model.field-precision float16)")
        return cls(model.positions.detach().cpu(), model.labels.detach().cpu(), model.position_grid.detach().cpu(),
                   model.attribute_mins.detach().cpu(), model.attribute_maxs.detach().cpu(),
                   {k: v.detach().cpu() for k, v in model.field.state_dict().items()},
                   model.config.field_activation, int(model.config.sh_degree))

    def to_bytes(self) -> bytes:
        codes = quantize_positions(self.positions, self.position_grid)
        if not torch.equal(dequantize_positions(codes, self.position_grid), self.positions):
            # Training used these exact positions; storing others would silently change the scene.
            raise NeuralGSError("positions are not on the model's position grid (a checkpoint from an older version?)")
        n_clusters = int(self.field_state["bounds_min"].shape[0])
        cluster_sizes = torch.bincount(self.labels, minlength=n_clusters)
        # Bounds stay float32: decoded inputs are normalised by them (6 floats per cluster).
        field = {k: (v if k.startswith("bounds") else v.half()) for k, v in self.field_state.items()}
        buf = io.BytesIO()
        torch.save({"position_codes": (codes - 32768).to(torch.int16), "position_grid": self.position_grid,
                    "cluster_sizes": cluster_sizes, "attribute_mins": self.attribute_mins,
                    "attribute_maxs": self.attribute_maxs, "field": field,
                    "field_activation": self.field_activation, "sh_degree": self.sh_degree}, buf)
        return MAGIC + buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, path: Path) -> "CompressedScene":
        if not data.startswith(MAGIC):
            raise InputFileError(path, "not a neuralgs compressed file (wrong magic)")
        try:
            d = torch.load(io.BytesIO(data[len(MAGIC):]), map_location="cpu", weights_only=True)
            positions = dequantize_positions(d["position_codes"].long() + 32768, d["position_grid"])
            labels = torch.repeat_interleave(torch.arange(len(d["cluster_sizes"])), d["cluster_sizes"])
            if labels.shape[0] != positions.shape[0]:
                raise ValueError("cluster sizes do not add up to the number of positions")
            return cls(positions, labels, d["position_grid"], d["attribute_mins"], d["attribute_maxs"], d["field"],
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

"""Quantisation shared by the model and the file, so the trained model is exactly what a
decoder rebuilds from the file.

Positions: a uniform grid of 2^bits steps per axis over the scene's bounding box. The model
snaps its positions to the grid before fitting (stage B), so the MLPs are trained on the very
positions the file stores.

MLP weights: stored as float16. The field trains float32 master weights but always evaluates
their float16 rounding (see `ClusteredMLPField`), so fine-tuning sees the stored weights.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

POSITION_BITS = 16


def position_grid(positions: Tensor, bits: int = POSITION_BITS) -> Tensor:
    """[2, 3]: origin (the bounding box's min corner) and per-axis step of a grid with 2^bits
    points per axis spanning the bounding box of `positions` [N, 3]."""
    if not 1 <= bits <= 16:
        raise ValueError(f"position bits must be in [1, 16], got {bits}")
    positions = positions.detach().float()
    if positions.shape[0] == 0:
        return torch.stack([positions.new_zeros(3), positions.new_ones(3)])
    lo, hi = positions.min(dim=0).values, positions.max(dim=0).values
    extent = hi - lo
    # A flat axis (all points on one plane) gets a unit step: every code is 0 there.
    step = torch.where(extent > 0, extent / ((1 << bits) - 1), torch.ones_like(extent))
    return torch.stack([lo, step])


def quantize_positions(positions: Tensor, grid: Tensor, bits: int = POSITION_BITS) -> Tensor:
    """Codes [N, 3] int64 in [0, 2^bits - 1] of the grid points nearest to `positions`."""
    codes = torch.round((positions.detach().float() - grid[0]) / grid[1])
    return codes.clamp(0, (1 << bits) - 1).long()


def dequantize_positions(codes: Tensor, grid: Tensor) -> Tensor:
    """The grid points [N, 3] float32 of `codes`: the one formula both writer and reader use."""
    return grid[0].float() + codes.float() * grid[1].float()


def snap_positions(positions: Tensor, bits: int = POSITION_BITS) -> Tuple[Tensor, Tensor]:
    """(positions moved to the nearest point of the grid the file stores them on, the grid).
    Computed on the CPU, as a decoder does: a GPU may fuse the multiply-add and round differently."""
    cpu = positions.detach().cpu()
    grid = position_grid(cpu, bits)
    return dequantize_positions(quantize_positions(cpu, grid, bits), grid).to(positions.device), grid


def round_to_float16(x: Tensor) -> Tensor:
    """x rounded to float16 precision, kept float32, with the identity gradient (straight
    through), so training updates float32 master weights while using the stored ones.
    Exact: the value is the float16 rounding itself, plus a zero."""
    return x.detach().half().float() + (x - x.detach())

"""Quantisation shared by the model and the file, so the trained model is exactly what a
decoder rebuilds from the file.

Positions: a uniform grid of 2^bits steps per axis over the scene's bounding box. The model
snaps its positions to the grid before fitting (stage B), so the MLPs are trained on the very
positions the file stores.

Position order: within a cluster, positions are stored in Morton (Z-order) order of their
grid codes, which keeps neighbours adjacent so the gaps between consecutive codes are small
and cheap to entropy code (`codec.positions`). The model sorts its positions the same way.

MLP weights: stored as float16, or as int8 with one float16 scale per output unit. The field
trains float32 master weights but always evaluates their stored rounding (see
`ClusteredMLPField`), so fine-tuning sees exactly the stored weights (quantisation-aware).

Residuals: a per-Gaussian correction of some attribute columns, stored as integer multiples of
a per-column step (`codec.residuals`); the model trains float32 values and evaluates their
rounding to the step, the same way.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

POSITION_BITS = 13
"""Grid resolution per axis where none is given; the model chooses one per scene by measuring
the teacher's renders (`compress.rate.choose_position_bits`; lego-200 gets 13, the 50k .ply
11). Trained CPU-preset models moved to other grids (val PSNR change):
  lego-200 (a 12.9-unit bounding box, 20 val views), against 16 bits: 14 bits -0.002 dB,
    13 bits -0.009 dB, 12 bits -0.077 dB, 11 bits -0.28 dB;
  the 50k-Gaussian lego .ply (10.3 units, 16 views), against 13 bits: 12 bits -0.014 dB,
    11 bits -0.078 dB, 10 bits -0.26 dB.
Each bit costs about 3 bits per Gaussian after entropy coding (on lego 13 bits save 44 KB over
14, 6%)."""
MAX_POSITION_BITS = 16  # Morton codes of 3 x 16 bits fit in an int64 with room to spare
INT8_LEVELS = 127  # symmetric int8 codes in [-127, 127]


def position_grid(positions: Tensor, bits: int = POSITION_BITS) -> Tensor:
    """[2, 3]: origin (the bounding box's min corner) and per-axis step of a grid with 2^bits
    points per axis spanning the bounding box of `positions` [N, 3]."""
    if not 1 <= bits <= MAX_POSITION_BITS:
        raise ValueError(f"position bits must be in [1, {MAX_POSITION_BITS}], got {bits}")
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


def int8_weight_scales(weights: Tensor) -> Tensor:
    """Per-output-unit scales [K, 1, out] of int8 weights [K, in, out]: the largest magnitude
    maps to 127. Rounded to float16 (what the file stores); an all-zero column gets scale 1."""
    scale = (weights.detach().abs().amax(dim=-2, keepdim=True) / INT8_LEVELS).half().float()
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def int8_weight_codes(weights: Tensor, scales: Tensor) -> Tensor:
    """int8 codes of `weights` [K, in, out] at `scales` [K, 1, out]."""
    return torch.round(weights.detach() / scales).clamp(-INT8_LEVELS, INT8_LEVELS).to(torch.int8)


def dequantize_int8_weights(codes: Tensor, scales: Tensor) -> Tensor:
    """The weights [K, in, out] float32 of int8 `codes` and float16-valued `scales`: the one
    formula both the training forward pass and the decoder use."""
    return codes.float() * scales.float()


def round_to_int8(weights: Tensor) -> Tensor:
    """Weights [K, in, out] replaced by their int8 reconstruction, with the identity gradient
    (straight through), like `round_to_float16`."""
    scales = int8_weight_scales(weights)
    stored = dequantize_int8_weights(int8_weight_codes(weights, scales), scales)
    return stored + (weights - weights.detach())


RESIDUAL_RANGE = 2.0
"""Corrections are clamped to +-this: normalised attributes span [-1, 1], so a larger one is
never needed, and the bound keeps each column's codes within the coder's alphabet."""


def residual_codes(values: Tensor, steps: Tensor) -> Tensor:
    """Integer codes [N, C] int64 of residuals `values` [N, C] at per-column `steps` [C]."""
    return torch.round(values.detach().clamp(-RESIDUAL_RANGE, RESIDUAL_RANGE) / steps).long()


def dequantize_residuals(codes: Tensor, steps: Tensor) -> Tensor:
    """The residuals [N, C] float32 of `codes` at `steps`: the one formula both the training
    forward pass and the decoder use."""
    return codes.float() * steps.float()


def round_to_residual_steps(values: Tensor, steps: Tensor) -> Tensor:
    """Residuals replaced by their stored values, with the identity gradient (straight
    through), like `round_to_int8`."""
    clamped = values.clamp(-RESIDUAL_RANGE, RESIDUAL_RANGE)
    return dequantize_residuals(residual_codes(values, steps), steps) + (clamped - clamped.detach())


def _spread_bits(v: Tensor) -> Tensor:
    """Bits b of v (< 2^16, int64) moved to bit 3b."""
    v = v & 0xFFFF
    v = (v | (v << 16)) & 0x0000FF0000FF
    v = (v | (v << 8)) & 0x00F00F00F00F
    v = (v | (v << 4)) & 0x0C30C30C30C3
    return (v | (v << 2)) & 0x249249249249


def _gather_bits(v: Tensor) -> Tensor:
    """Inverse of `_spread_bits`: bits 3b of v moved to bit b."""
    v = v & 0x249249249249
    v = (v | (v >> 2)) & 0x0C30C30C30C3
    v = (v | (v >> 4)) & 0x00F00F00F00F
    v = (v | (v >> 8)) & 0x0000FF0000FF
    return (v | (v >> 16)) & 0xFFFF


def morton_codes(codes: Tensor) -> Tensor:
    """Z-order keys [N] int64 of grid codes [N, 3] (< 2^16 each): x in bit 3b, y in 3b+1, z in 3b+2."""
    codes = codes.long()
    return _spread_bits(codes[:, 0]) | (_spread_bits(codes[:, 1]) << 1) | (_spread_bits(codes[:, 2]) << 2)


def morton_decode(keys: Tensor) -> Tensor:
    """Grid codes [N, 3] int64 of Z-order keys [N]."""
    keys = keys.long()
    return torch.stack([_gather_bits(keys), _gather_bits(keys >> 1), _gather_bits(keys >> 2)], dim=-1)


def storage_order(codes: Tensor, labels: Tensor) -> Tensor:
    """The permutation that puts Gaussians in the order the file stores them: by cluster,
    then by Morton key of their grid codes [N, 3] (ties keep their order)."""
    keys = morton_codes(codes.cpu()) | (labels.cpu().long() << (3 * MAX_POSITION_BITS))
    return torch.argsort(keys, stable=True).to(labels.device)

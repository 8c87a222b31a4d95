"""Quantisation shared by the model and the file (`neuralgs_ns.codec.quantize`)."""

import torch

from neuralgs_ns.codec.quantize import (dequantize_positions, quantize_positions, round_to_float16,
                                        snap_positions)


def test_snapped_positions_are_within_half_a_step_and_stable():
    g = torch.Generator().manual_seed(0)
    positions = torch.randn(5000, 3, generator=g) * torch.tensor([10.0, 1.0, 0.01])
    snapped, grid = snap_positions(positions, bits=12)
    assert (snapped - positions).abs().le(grid[1] / 2 * (1 + 1e-4)).all()
    # Re-quantising a snapped point on its grid gives the same code, so the file reproduces it.
    codes = quantize_positions(snapped, grid, bits=12)
    assert torch.equal(dequantize_positions(codes, grid), snapped)
    assert codes.min() == 0 and codes.max() == (1 << 12) - 1


def test_flat_axis_and_empty_input():
    positions = torch.rand(100, 3)
    positions[:, 2] = 3.5  # a planar scene
    snapped, grid = snap_positions(positions)
    assert torch.equal(snapped[:, 2], positions[:, 2])
    empty, _ = snap_positions(torch.zeros(0, 3))
    assert empty.shape == (0, 3)


def test_more_bits_are_finer():
    positions = torch.rand(2000, 3, generator=torch.Generator().manual_seed(1))
    errors = [float((snap_positions(positions, bits)[0] - positions).abs().max()) for bits in (8, 12, 16)]
    assert errors[0] > errors[1] > errors[2] > 0


def test_round_to_float16_value_and_straight_through_gradient():
    x = (torch.randn(1000, generator=torch.Generator().manual_seed(2)) * 3).requires_grad_()
    y = round_to_float16(x)
    assert torch.equal(y.detach(), x.detach().half().float())
    assert not torch.equal(y.detach(), x.detach())
    (y * torch.arange(1000.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(1000.0))

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


def test_int8_weights_use_127_levels_per_output_unit_and_pass_gradients_through():
    from neuralgs_ns.codec.quantize import int8_weight_codes, int8_weight_scales, round_to_int8

    gen = torch.Generator().manual_seed(0)
    w = (torch.randn(3, 7, 5, generator=gen) * torch.tensor([1e-3, 1.0, 10.0, 0.1, 0.0])).requires_grad_()
    scales = int8_weight_scales(w)
    codes = int8_weight_codes(w, scales)
    assert codes.abs().amax(dim=1)[:, :4].eq(127).all()  # each column's largest weight uses the full range
    assert torch.equal(scales[..., 4], torch.ones(3, 1)) and codes[..., 4].eq(0).all()  # an all-zero column
    stored = round_to_int8(w)
    assert (stored - w).abs().le(scales / 2 * (1 + 1e-3)).all()  # within half a step of the master weights
    assert torch.equal(round_to_int8(stored.detach()), stored.detach())  # quantising stored weights is a no-op
    stored.backward(torch.arange(w.numel(), dtype=torch.float32).reshape(w.shape))
    assert torch.equal(w.grad, torch.arange(w.numel(), dtype=torch.float32).reshape(w.shape))


def test_storage_order_groups_by_cluster_then_follows_the_z_curve():
    from neuralgs_ns.codec.quantize import morton_codes, storage_order

    gen = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 1 << 14, (500, 3), generator=gen)
    labels = torch.randint(0, 4, (500,), generator=gen)
    order = storage_order(codes, labels)
    keys = [(int(labels[i]), int(morton_codes(codes[i : i + 1])[0])) for i in order]
    assert keys == sorted(keys)

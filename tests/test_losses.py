"""Stage D losses: SSIM wrapper, high-pass frequency loss, and the combined photometric loss."""

import math

import pytest
import torch
from pytorch_msssim import SSIM

from neuralgs_ns.compress.losses import (
    NeuralGSLossConfig,
    frequency_loss,
    highpass_mask,
    photometric_loss,
    ssim,
)


def textured_image(height=48, width=64, seed=0, dtype=torch.float32):
    """[H, W, 3] in [0, 1]: stripes, a checkerboard and pixel noise, i.e. energy at all frequencies."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(height, dtype=dtype), torch.arange(width, dtype=dtype), indexing="ij")
    stripes = 0.5 + 0.5 * torch.sin(2 * math.pi * (xx / 3.7 + yy / 11.0))
    checker = ((xx // 4 + yy // 4) % 2).to(dtype)
    noise = torch.rand(height, width, 3, generator=g, dtype=dtype)
    img = torch.stack([stripes, checker, 0.5 * stripes + 0.5 * checker], dim=-1)
    return (0.7 * img + 0.3 * noise).clamp(0, 1)


def gaussian_blur(img, sigma):
    """Separable Gaussian blur of [H, W, C] with reflected borders."""
    radius = int(math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=img.dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = img.shape[-1]
    out = img.permute(2, 0, 1)[None]
    out = torch.nn.functional.pad(out, (radius, radius, radius, radius), mode="reflect")
    out = torch.nn.functional.conv2d(out, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    out = torch.nn.functional.conv2d(out, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return out[0].permute(1, 2, 0)


def test_ssim_matches_splatfacto_module_and_accepts_both_layouts():
    gt = textured_image()
    pred = gaussian_blur(gt, 1.0)
    module = SSIM(data_range=1.0, size_average=True, channel=3)
    reference = module(pred.permute(2, 0, 1)[None], gt.permute(2, 0, 1)[None])
    assert ssim(pred, gt).item() == pytest.approx(reference.item(), abs=1e-6)
    assert ssim(pred[None], gt[None]).item() == pytest.approx(reference.item(), abs=1e-6)
    assert ssim(gt, gt).item() == pytest.approx(1.0, abs=1e-6)
    assert 0.0 < reference.item() < 0.99


def test_ssim_is_differentiable_and_rejects_tiny_images():
    gt = textured_image(24, 24)
    pred = gaussian_blur(gt, 1.0).requires_grad_()
    (1 - ssim(pred, gt)).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="11x11"):
        ssim(torch.rand(8, 16, 3), torch.rand(8, 16, 3))
    with pytest.raises(ValueError, match="differ in shape"):
        ssim(torch.rand(16, 16, 3), torch.rand(17, 16, 3))


def test_highpass_mask_is_radial_in_nyquist_units():
    mask = highpass_mask(8, 16, 0.5)
    assert not mask[0, 0]  # DC
    assert mask[0, 8] and mask[4, 0]  # Nyquist on each axis: radius 1
    assert not mask[0, 2] and mask[0, 5]  # 2/16 and 5/16 cycles per pixel: radius 0.25 and 0.625
    assert highpass_mask(8, 16, 0.0).sum() == 8 * 16 - 1


@pytest.mark.parametrize("phase_weighting", ["amplitude", "none"])
def test_frequency_loss_is_zero_for_identical_images_and_grows_with_blur(phase_weighting):
    gt = textured_image()
    assert frequency_loss(gt, gt, phase_weighting=phase_weighting).item() == 0.0
    losses = [frequency_loss(gaussian_blur(gt, s), gt, phase_weighting=phase_weighting).item()
              for s in (0.3, 0.6, 1.0, 1.5, 2.5)]
    assert all(a < b for a, b in zip(losses, losses[1:])), losses


def test_frequency_loss_ignores_low_frequencies_below_the_cutoff():
    gt = textured_image()
    # A brightness offset and a slow ramp live at (or next to) DC: nearly invisible to a high-pass.
    ramp = torch.linspace(0, 0.1, gt.shape[1])[None, :, None]
    shifted = gt + 0.05 + ramp
    assert frequency_loss(shifted, gt).item() < 0.1 * frequency_loss(gaussian_blur(gt, 1.0), gt).item()


def test_frequency_loss_batches_like_the_mean_of_its_images():
    a, b = textured_image(seed=1), textured_image(seed=2)
    pa, pb = gaussian_blur(a, 1.0), gaussian_blur(b, 2.0)
    batched = frequency_loss(torch.stack([pa, pb]), torch.stack([a, b]))
    assert batched.item() == pytest.approx(0.5 * (frequency_loss(pa, a) + frequency_loss(pb, b)).item(), rel=1e-5)


@pytest.mark.parametrize("phase_weighting", ["amplitude", "none"])
# Odd sides: no self-conjugate frequency but DC; even sides: real Nyquist coefficients too.
@pytest.mark.parametrize("size", [(5, 7), (6, 8)])
def test_frequency_loss_gradcheck(phase_weighting, size):
    g = torch.Generator().manual_seed(3)
    pred = torch.rand(*size, 2, generator=g, dtype=torch.float64, requires_grad=True)
    gt = torch.rand(*size, 2, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: frequency_loss(p, gt, 0.3, phase_weighting), (pred,))


@pytest.mark.parametrize("phase_weighting", ["amplitude", "none"])
def test_frequency_loss_gradient_is_finite_at_zero_amplitude(phase_weighting):
    # Rows constant along x: every frequency off the vertical axis has exactly zero amplitude,
    # so its phase is undefined; a fully constant render even has zero energy above DC.
    gt = textured_image(16, 16)
    rows = torch.linspace(0, 1, 16)[:, None, None].expand(16, 16, 3).clone().requires_grad_()
    frequency_loss(rows, gt, phase_weighting=phase_weighting).backward()
    assert torch.isfinite(rows.grad).all() and rows.grad.abs().sum() > 0
    flat = torch.full_like(gt, 0.5, requires_grad=True)
    frequency_loss(flat, gt, phase_weighting=phase_weighting).backward()
    assert torch.isfinite(flat.grad).all()


def test_photometric_loss_combines_the_weighted_terms():
    gt = textured_image()
    pred = gaussian_blur(gt, 1.0).requires_grad_()
    config = NeuralGSLossConfig()
    out = photometric_loss(pred, gt, config)
    assert set(out) == {"l1", "ssim", "frequency", "total"}
    expected = 0.8 * out["l1"] + 0.2 * out["ssim"] + 0.01 * out["frequency"]
    assert out["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert out["ssim"].item() == pytest.approx(1 - ssim(pred, gt).item(), abs=1e-6)
    out["total"].backward()
    assert torch.isfinite(pred.grad).all()

    no_freq = photometric_loss(pred, gt, NeuralGSLossConfig(use_frequency_loss=False))
    assert set(no_freq) == {"l1", "ssim", "total"}
    assert no_freq["total"].item() == pytest.approx((0.8 * out["l1"] + 0.2 * out["ssim"]).item(), rel=1e-6)
    assert photometric_loss(gt, gt, config)["total"].item() == pytest.approx(0.0, abs=1e-6)

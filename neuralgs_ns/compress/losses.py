"""Stage D losses (NEURALGS.md, Sec. 3.4): L_total = 0.8 * L1 + 0.2 * (1 - SSIM) + 0.01 * L_freq.

All images are RGB, channels last, values in [0, 1]: [B, H, W, 3] or [H, W, 3] (nerfstudio's
layout for `outputs["rgb"]` and `batch["image"]`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Literal

import torch
from pytorch_msssim import ssim as _msssim_ssim
from torch import Tensor

SSIM_WINDOW = 11
"""Side of the Gaussian SSIM window in pixels (3DGS / splatfacto)."""
SSIM_SIGMA = 1.5
"""Standard deviation of the Gaussian SSIM window in pixels (3DGS / splatfacto)."""

PhaseWeighting = Literal["amplitude", "none"]


def _to_bchw(pred: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """[B, H, W, C] or [H, W, C] pairs -> [B, C, H, W] pairs, after checking they match."""
    if pred.shape != gt.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ in shape")
    if pred.dim() == 3:
        pred, gt = pred[None], gt[None]
    if pred.dim() != 4:
        raise ValueError(f"images must be [B, H, W, C] or [H, W, C], got {tuple(pred.shape)}")
    return pred.permute(0, 3, 1, 2), gt.permute(0, 3, 1, 2)


def ssim(pred: Tensor, gt: Tensor) -> Tensor:
    """Mean SSIM of `pred` against `gt`, the same measure splatfacto trains and evaluates with.

    11x11 Gaussian window (sigma 1.5), K = (0.01, 0.03), data range 1, no padding ("valid"
    windows only, as `pytorch_msssim`), averaged over pixels, channels and the batch.

    Args:
        pred, gt: images [B, H, W, C] or [H, W, C] in [0, 1], H and W at least 11.

    Returns:
        scalar in [-1, 1], 1 for identical images; differentiable in both inputs.
    """
    x, y = _to_bchw(pred, gt)
    if min(x.shape[-2:]) < SSIM_WINDOW:
        # pytorch_msssim would silently skip the smoothing along the short side.
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {tuple(x.shape[-2:])}")
    return _msssim_ssim(x, y, data_range=1.0, size_average=True, win_size=SSIM_WINDOW, win_sigma=SSIM_SIGMA)


def highpass_mask(height: int, width: int, cutoff: float, device=None) -> Tensor:
    """Boolean mask [H, W] over `torch.fft.fft2`'s (unshifted) frequency grid, true where the
    frequency's radius exceeds `cutoff`.

    The radius is measured in the centred spectrum with each axis normalised by its Nyquist
    frequency (0.5 cycles per pixel), so it runs from 0 (DC) to 1 on the axes and sqrt(2) in
    the corners, whatever the image's size or aspect ratio.
    """
    fy = torch.fft.fftfreq(height, device=device) / 0.5
    fx = torch.fft.fftfreq(width, device=device) / 0.5
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    return radius > cutoff


def frequency_loss(
    pred: Tensor,
    gt: Tensor,
    highpass_cutoff: float = 0.25,
    phase_weighting: PhaseWeighting = "amplitude",
) -> Tensor:
    """High-pass spectral loss L_freq of NEURALGS.md Sec. D: amplitude plus phase differences.

    Each channel of each image goes through `torch.fft.fft2` with `norm="ortho"`; over the
    frequencies kept by `highpass_mask(H, W, highpass_cutoff)`, with P and G the render's and
    the ground truth's coefficients, A = |.| their amplitudes and dphi the phase of P * conj(G)
    (the phase difference already wrapped into (-pi, pi], so 2 pi jumps cost nothing):

        L = mean |A_P - A_G| + mean_w |dphi|

    with the amplitude term averaged over kept frequencies, channels and images, and the phase
    term a weighted mean per image (over kept frequencies and channels), then averaged over
    images: weights w = min(A_P, A_G) ("amplitude") or 1 ("none").

    Choices the paper leaves open:
    - Norm: L1, as for the photometric term. With the orthonormal FFT, Parseval makes the
      amplitude term the size of a per-pixel error (a pixel error e spreads to spectral errors
      of about e), independent of resolution; the phase term is in radians. Both keep one
      meaning across image sizes, so the paper's weight 0.01 does too.
    - Bandwidth: a fixed radial high-pass at `highpass_cutoff` = 0.25 of Nyquist, i.e. every
      pattern with a period under 8 pixels. That is the detail splatting loses first (a few
      pixels wide Gaussians blur it) and that L1/SSIM, dominated by the strong low frequencies
      of natural images' ~1/f spectrum, under-weight; DC and coarse shading are left to them.
    - Phase weighting ("amplitude", the default): a frequency whose amplitude is at noise
      level in either image has a random phase, and an unweighted mean lets those frequencies
      (most of a high-pass band) dominate. Weighting by the smaller amplitude counts each phase
      error as the arc min(A_P, A_G) * |dphi| it moves a coefficient along, and keeps the
      gradient bounded as an amplitude approaches zero (the phase's gradient grows as 1 / A,
      its weight shrinks as A). "none" is the literal reading, kept for ablations; its
      gradient is finite but large at tiny amplitudes.
    - No window (Hann etc.) before the FFT: render and ground truth share the same borders, so
      the leakage of the image edges appears in both spectra and largely cancels.

    Args:
        pred, gt: images [B, H, W, C] or [H, W, C], in [0, 1].
        highpass_cutoff: kept frequencies have a normalised radius above this, in [0, sqrt(2)).
        phase_weighting: "amplitude" or "none", see above.

    Returns:
        scalar >= 0, exactly 0 for identical images; differentiable in `pred` (and `gt`), with
        finite gradients everywhere, including at zero amplitude.
    """
    if phase_weighting not in ("amplitude", "none"):
        raise ValueError(f"phase_weighting must be 'amplitude' or 'none', got {phase_weighting!r}")
    x, y = _to_bchw(pred, gt)
    mask = highpass_mask(x.shape[-2], x.shape[-1], highpass_cutoff, device=x.device)
    if not mask.any():
        raise ValueError(f"highpass_cutoff {highpass_cutoff} keeps no frequency (must be below sqrt(2))")
    spec_pred = torch.fft.fft2(x, norm="ortho")[..., mask]  # [B, C, K] complex
    spec_gt = torch.fft.fft2(y, norm="ortho")[..., mask]
    amp_pred, amp_gt = spec_pred.abs(), spec_gt.abs()
    amplitude_term = (amp_pred - amp_gt).abs().mean()

    # P * conj(G), its phase phi_P - phi_G already wrapped; written out so that identical
    # inputs give an imaginary part of exactly 0 (b*a - a*b), hence a loss of exactly 0.
    re = spec_pred.real * spec_gt.real + spec_pred.imag * spec_gt.imag
    im = spec_pred.imag * spec_gt.real - spec_pred.real * spec_gt.imag
    # The phase only means something where both amplitudes clear rounding noise, and atan2's
    # gradient is 0/0 at the origin: feed it (1, 0) there, so dphi and its gradient are 0.
    degenerate = re * re + im * im <= torch.finfo(re.dtype).eps ** 2
    dphi = torch.atan2(torch.where(degenerate, 0.0, im), torch.where(degenerate, 1.0, re))
    if phase_weighting == "amplitude":
        weight = torch.minimum(amp_pred, amp_gt)
        total_weight = weight.sum(dim=(1, 2)).clamp_min(torch.finfo(weight.dtype).tiny)  # 0 for flat images
        phase_term = ((weight * dphi.abs()).sum(dim=(1, 2)) / total_weight).mean()
    else:
        phase_term = dphi.abs().mean()
    return amplitude_term + phase_term


@dataclass
class NeuralGSLossConfig:
    """Weights of the fine-tuning loss L_total = l1 * L1 + ssim * (1 - SSIM) + frequency * L_freq."""

    l1_weight: float = 0.8
    """Weight of the mean absolute RGB error (the paper's 0.8)."""
    ssim_weight: float = 0.2
    """Weight of 1 - SSIM (11x11 Gaussian window, sigma 1.5; the paper's 0.2)."""
    frequency_weight: float = 0.01
    """Weight of the high-pass spectral loss (amplitude + phase differences; the paper's 0.01)."""
    use_frequency_loss: bool = True
    """Add the spectral loss. Off reproduces the paper's ablation without it (and skips two FFTs per image)."""
    highpass_cutoff: float = 0.25
    """Spectral loss: keep frequencies above this fraction of Nyquist (0.25 = patterns with a period under 8 pixels)."""
    phase_weighting: PhaseWeighting = "amplitude"
    """Spectral loss: 'amplitude' weighs each phase error by the smaller of the two amplitudes
    (noise-level frequencies count little); 'none' averages raw phase errors in radians."""


def photometric_loss(pred: Tensor, gt: Tensor, config: NeuralGSLossConfig) -> Dict[str, Tensor]:
    """The stage D loss and its terms.

    Args:
        pred, gt: rendered and ground-truth images [B, H, W, 3] or [H, W, 3] in [0, 1].
        config: the weights.

    Returns:
        {"l1": mean |pred - gt|, "ssim": 1 - SSIM, "frequency": L_freq (only with
        `use_frequency_loss`), "total": their weighted sum}; the terms are unweighted. Hand
        nerfstudio only "total" as a loss: its trainer sums every entry of a loss dict.
    """
    terms = {"l1": (pred - gt).abs().mean(), "ssim": 1.0 - ssim(pred, gt)}
    total = config.l1_weight * terms["l1"] + config.ssim_weight * terms["ssim"]
    if config.use_frequency_loss:
        terms["frequency"] = frequency_loss(pred, gt, config.highpass_cutoff, config.phase_weighting)
        total = total + config.frequency_weight * terms["frequency"]
    terms["total"] = total
    return terms

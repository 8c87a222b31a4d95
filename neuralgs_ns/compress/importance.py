"""Stage A: global importance of every Gaussian over the training views, and pruning.

    S_j = sum over views, pixels p of  (V_norm_j)^beta * alpha_j(p) * T_j(p)      (NEURALGS.md, A)

sum_p alpha_j(p) T_j(p) is exactly the gradient of the summed one-channel render with
respect to Gaussian j's colour, so one forward + backward per view through `rasterize`
computes it on either device with no extra kernel.
"""

from __future__ import annotations

from typing import Iterable, Optional, Tuple

import torch
from torch import Tensor

from neuralgs_ns.gaussians import Gaussians
from neuralgs_ns.render import rasterize

View = Tuple[Tensor, Tensor, int, int]  # viewmat [4, 4], K [3, 3], width, height


def blending_weights(gaussians: Gaussians, viewmat: Tensor, K: Tensor, width: int, height: int) -> Tensor:
    """sum over the pixels of one view of alpha_j(p) * T_j(p), per Gaussian [N]."""
    ones = torch.ones(len(gaussians), 1, device=gaussians.means.device, requires_grad=True)
    with torch.enable_grad():
        renders, _, _ = rasterize(
            gaussians.means.detach(), gaussians.quats.detach(), gaussians.activated_scales.detach(),
            gaussians.activated_opacities.detach(), ones, viewmat[None], K[None], width, height,
        )
        (weights,) = torch.autograd.grad(renders.sum(), ones)
    return weights[:, 0]


def volume_factor(gaussians: Gaussians, beta: float, quantile: float = 0.9) -> Tensor:
    """(V / V_q).clamp(0, 1) ** beta with V the product of the activated scales and V_q the
    volume at `quantile` (LightGaussian's normalisation: the largest 10% count as 1)."""
    volume = gaussians.activated_scales.prod(dim=-1)
    v_ref = torch.quantile(volume.float().cpu(), quantile).to(volume.device).clamp_min(1e-30)
    return (volume / v_ref).clamp(0.0, 1.0) ** beta


def importance_scores(gaussians: Gaussians, views: Iterable[View], beta: float = 0.1,
                      progress: Optional[callable] = None) -> Tensor:
    """Global importance S [N] over `views` (Eq. in NEURALGS.md, stage A).

    progress: called once per view (e.g. a rich progress bar's advance)."""
    total = torch.zeros(len(gaussians), device=gaussians.means.device)
    for viewmat, K, width, height in views:
        total += blending_weights(gaussians, viewmat, K, width, height)
        if progress is not None:
            progress()
    return total * volume_factor(gaussians, beta)


def pruned_count(n: int, fraction: float) -> int:
    """How many of `n` Gaussians `prune_mask` drops at `fraction`."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"prune fraction must be in [0, 1), got {fraction}")
    return int(round(fraction * n))


def prune_mask(scores: Tensor, fraction: float) -> Tensor:
    """Boolean keep-mask [N] that drops the `fraction` of Gaussians with the lowest scores
    (ties broken by index, so the count is exact)."""
    n_drop = pruned_count(scores.shape[0], fraction)
    keep = torch.ones_like(scores, dtype=torch.bool)
    if n_drop:
        keep[torch.argsort(scores, stable=True)[:n_drop]] = False
    return keep

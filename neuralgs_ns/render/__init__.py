"""One rasteriser for both devices: gsplat on CUDA, the project's numba kernels on CPU."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
RASTERIZE_MODES = ("classic", "antialiased")


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    sh_degree: Optional[int] = None,
    backgrounds: Optional[Tensor] = None,
    render_mode: str = "RGB",
    rasterize_mode: str = "classic",
    absgrad: bool = False,
):
    """Renders Gaussians with gsplat 1.4.0 `rasterization` semantics on the device of `means`.

    Args:
        means: world-space centres [N, 3].
        quats: wxyz rotations [N, 4], any norm.
        scales: activated (not log) scales [N, 3].
        opacities: activated (not logit) opacities [N].
        colors: post-activation colours [N, D] or [C, N, D]; or, with `sh_degree`, SH
            coefficients [N, K, 3] or [C, N, K, 3] (K >= (sh_degree + 1)^2).
        viewmats: world-to-camera matrices [C, 4, 4], OpenCV axes (x right, y down, z forward).
        Ks: pinhole intrinsics [C, 3, 3] in pixels.
        width, height: image size in pixels.
        backgrounds: colour behind the Gaussians [C, D] (D includes no depth channel).
        render_mode: "RGB", "D" (accumulated depth), "ED" (expected depth), "RGB+D", "RGB+ED".
        rasterize_mode: "classic", or "antialiased" (opacity scaled by the 2D blur's
            compensation, as in Mip-Splatting / gsplat).
        absgrad: also accumulate |d loss / d means2d| per pixel into `info["means2d"].absgrad`.

    Returns:
        renders [C, H, W, D] (D + 1 channels with depth modes, 1 for "D"/"ED"),
        alphas [C, H, W, 1], and an info dict holding what gsplat's `DefaultStrategy` reads:
        `means2d` [C, N, 2] (receives gradients), `radii` [C, N] (0 = not drawn), `depths`,
        `conics`, `opacities`, `width`, `height`, `n_cameras`, `gaussian_ids=None`.
    """
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    if rasterize_mode not in RASTERIZE_MODES:
        raise ValueError(f"rasterize_mode must be one of {RASTERIZE_MODES}, got {rasterize_mode!r}")
    _check_shapes(means, quats, scales, opacities, colors, viewmats, Ks, sh_degree,
                  backgrounds if render_mode not in ("D", "ED") else None)
    args = dict(
        near_plane=near_plane, far_plane=far_plane, sh_degree=sh_degree, backgrounds=backgrounds,
        render_mode=render_mode, rasterize_mode=rasterize_mode, absgrad=absgrad,
    )
    if means.is_cuda:
        from gsplat import rasterization

        # Unpacked, so that info["radii"] is [C, N] and gaussian_ids is None on both devices.
        return rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                             packed=False, **args)
    from neuralgs_ns.render.cpu import rasterize_cpu

    return rasterize_cpu(means, quats, scales, opacities, colors, viewmats, Ks, width, height, **args)


def _check_shapes(means, quats, scales, opacities, colors, viewmats, Ks, sh_degree, backgrounds):
    n = means.shape[0]
    c = viewmats.shape[0]
    problems = []
    if means.shape != (n, 3):
        problems.append(f"means {tuple(means.shape)} != [N, 3]")
    if quats.shape != (n, 4):
        problems.append(f"quats {tuple(quats.shape)} != [{n}, 4]")
    if scales.shape != (n, 3):
        problems.append(f"scales {tuple(scales.shape)} != [{n}, 3]")
    if opacities.shape != (n,):
        problems.append(f"opacities {tuple(opacities.shape)} != [{n}]")
    if viewmats.shape != (c, 4, 4):
        problems.append(f"viewmats {tuple(viewmats.shape)} != [C, 4, 4]")
    if Ks.shape != (c, 3, 3):
        problems.append(f"Ks {tuple(Ks.shape)} != [{c}, 3, 3]")
    if sh_degree is None:
        if not ((colors.dim() == 2 and colors.shape[0] == n) or (colors.dim() == 3 and colors.shape[:2] == (c, n))):
            problems.append(f"colors {tuple(colors.shape)} != [N, D] or [C, N, D]")
    else:
        ok = (colors.dim() == 3 and colors.shape[0] == n) or (colors.dim() == 4 and colors.shape[:2] == (c, n))
        if not ok or colors.shape[-1] != 3 or colors.shape[-2] < (sh_degree + 1) ** 2:
            problems.append(f"colors {tuple(colors.shape)} != [N, K>={(sh_degree + 1) ** 2}, 3] for SH degree {sh_degree}")
    channels = 3 if sh_degree is not None else colors.shape[-1]
    if backgrounds is not None and tuple(backgrounds.shape) != (c, channels):
        problems.append(f"backgrounds {tuple(backgrounds.shape)} != [{c}, {channels}] (one colour per camera)")
    if problems:
        raise ValueError("rasterize: " + "; ".join(problems))

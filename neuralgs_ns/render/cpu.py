"""The CPU rasteriser: gsplat 1.4.0's `rasterization` semantics without CUDA.

Projection and SH evaluation are vectorised PyTorch (autograd gives their backward); the
per-pixel compositing, the expensive part, runs in the numba kernels of `_cpu_kernels.py`
with an analytic backward wrapped in a `torch.autograd.Function`.
"""

from __future__ import annotations

import math
import threading
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from neuralgs_ns.render import _cpu_kernels as kernels
from neuralgs_ns.render.sh import spherical_harmonics

TILE_SIZE = 16
EPS2D = 0.3  # gsplat's default blur added to every 2D covariance (about a 3-pixel minimum)
# nerfstudio's viewer renders from its own thread while training runs; numba's workqueue
# threading layer (the fallback where OpenMP/TBB are missing) aborts on concurrent use.
_KERNEL_LOCK = threading.Lock()


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices [N, 3, 3] from wxyz quaternions [N, 4] of any norm."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(quats.shape[:-1] + (3, 3))


def project(means, quats, scales, viewmats, Ks, width, height, near_plane, far_plane,
            eps2d=EPS2D, radius_clip=0.0, antialiased=False):
    """Pinhole projection of 3D Gaussians, as gsplat's `fully_fused_projection` (unpacked).

    Returns radii [C, N] int32 (0 = not drawn), means2d [C, N, 2] pixels, depths [C, N] camera
    z, conics [C, N, 3] (upper triangle of the inverse 2D covariance) and compensations [C, N]
    (antialiased mode's opacity factor, or None).

    The 2D covariance J R S S^T R^T J^T is formed as (J M)(J M)^T with M = R_cam R S, which
    is a handful of elementwise ops instead of batched 3x3 matrix products (3x faster here).
    """
    n = means.shape[0]
    n_cams = viewmats.shape[0]
    rot = viewmats[:, :3, :3]
    means_c = means @ rot.transpose(1, 2) + viewmats[:, None, :3, 3]  # [C, N, 3]
    m_world = quat_to_rotmat(quats) * scales[:, None, :]  # [N, 3, 3], covariance = M M^T
    m_cam = (rot @ m_world.permute(1, 0, 2).reshape(3, n * 3)).reshape(n_cams, 3, n, 3)

    x, y, z = means_c.unbind(-1)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    # Behind or on the camera plane: use a safe depth so nothing below divides by ~0; those
    # Gaussians are culled by the near-plane test anyway.
    z_safe = torch.where(z > near_plane, z, torch.ones_like(z))
    # Clamp the Jacobian's evaluation point to 1.3x the view frustum, as gsplat does, so
    # Gaussians far off-screen don't blow up into huge 2D ellipses.
    lim_x = 0.3 * 0.5 * width / fx
    lim_y = 0.3 * 0.5 * height / fy
    tx = z_safe * torch.clamp(x / z_safe, min=-(cx / fx + lim_x), max=(width - cx) / fx + lim_x)
    ty = z_safe * torch.clamp(y / z_safe, min=-(cy / fy + lim_y), max=(height - cy) / fy + lim_y)
    # Rows of J M, J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]].
    jm0 = (fx / z_safe)[..., None] * m_cam[:, 0] - (fx * tx / z_safe**2)[..., None] * m_cam[:, 2]
    jm1 = (fy / z_safe)[..., None] * m_cam[:, 1] - (fy * ty / z_safe**2)[..., None] * m_cam[:, 2]
    means2d = torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], dim=-1)

    a, b, c = (jm0 * jm0).sum(-1), (jm0 * jm1).sum(-1), (jm1 * jm1).sum(-1)
    det_orig = a * c - b * b
    a, c = a + eps2d, c + eps2d
    det = a * c - b * b
    valid = (det > 0) & (z > near_plane) & (z < far_plane)
    det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)

    half_trace = 0.5 * (a + c)
    v1 = half_trace + torch.sqrt(torch.clamp(half_trace**2 - det, min=0.01))
    radius = torch.ceil(3.0 * torch.sqrt(v1)).detach()
    valid = valid & (radius > radius_clip)
    mx, my = means2d.detach().unbind(-1)
    valid = valid & (mx + radius > 0) & (mx - radius < width) & (my + radius > 0) & (my - radius < height)
    radii = torch.where(valid, radius, torch.zeros_like(radius)).int()

    compensations = None
    if antialiased:
        ratio = det_orig / det
        # sqrt has an infinite slope at 0 (zero-scale Gaussians): keep the gradient finite.
        compensations = torch.where(ratio > 0, torch.sqrt(ratio.clamp_min(1e-12)), torch.zeros_like(ratio))
    return radii, means2d, z, conics, compensations


class _RasterizeToPixels(torch.autograd.Function):
    """Tile compositing on CPU with gsplat's forward and analytic backward."""

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, backgrounds, radii, depths, width, height, absgrad):
        n_cams, n_gauss = radii.shape
        tiles_x = math.ceil(width / TILE_SIZE)
        tiles_y = math.ceil(height / TILE_SIZE)
        dtype = means2d.dtype
        np_args = [t.detach().contiguous().numpy() for t in (means2d, conics, colors, opacities, backgrounds)]
        order = np.argsort(depths.detach().numpy(), axis=1, kind="stable")
        with _KERNEL_LOCK:
            offsets, ids = kernels.bin_gaussians(order, np_args[0], radii.numpy(), np_args[1], np_args[3], TILE_SIZE,
                                                 tiles_x, tiles_y)
            render, t_final, last_ids = kernels.rasterize_forward(
                offsets, ids, *np_args, width, height, TILE_SIZE, tiles_x, tiles_y
            )
        ctx.geometry = (offsets, ids, last_ids, width, height, tiles_x, tiles_y, n_gauss)
        ctx.np_args = np_args
        ctx.absgrad = absgrad
        t_final = torch.from_numpy(t_final)
        ctx.save_for_backward(means2d, t_final)
        alphas = (1.0 - t_final).unsqueeze(-1).to(dtype)
        return torch.from_numpy(render), alphas

    @staticmethod
    def backward(ctx, v_render, v_alphas):
        means2d, t_final = ctx.saved_tensors
        offsets, ids, last_ids, width, height, tiles_x, tiles_y, n_gauss = ctx.geometry
        np_means2d, np_conics, np_colors, np_opac, np_bg = ctx.np_args
        dtype = means2d.dtype
        with _KERNEL_LOCK:
            isect = kernels.rasterize_backward(
                offsets, ids, np_means2d, np_conics, np_colors, np_opac, np_bg,
                t_final.numpy(), last_ids,
                v_render.detach().to(dtype).contiguous().numpy(),
                v_alphas.detach()[..., 0].to(dtype).contiguous().numpy(),
                width, height, TILE_SIZE, tiles_x, tiles_y,
            )
            per_gauss = kernels.sum_isect_grads(offsets, ids, isect, n_gauss, tiles_x * tiles_y)
        per_gauss = torch.from_numpy(per_gauss)
        v_means2d = per_gauss[..., 0:2]
        v_conics = per_gauss[..., 2:5]
        v_opacities = per_gauss[..., 5]
        v_colors = per_gauss[..., 8:]
        if ctx.absgrad:
            means2d.absgrad = per_gauss[..., 6:8].clone()
        v_backgrounds = None
        if ctx.needs_input_grad[4]:
            v_backgrounds = (t_final.unsqueeze(-1) * v_render).sum(dim=(1, 2))
        return v_means2d, v_conics, v_colors, v_opacities, v_backgrounds, None, None, None, None, None


def _finite_rows(t: Tensor, dim: int = 0) -> Tensor:
    """[N] mask of the Gaussians (along `dim`) whose entries in `t` are all finite.

    A sum is non-finite exactly when an entry is (or when it overflows, which only drops an
    absurd Gaussian); one reduction is far cheaper than isfinite + all over SH arrays."""
    t = t.detach().movedim(dim, 0)
    return torch.isfinite(t.flatten(1).sum(-1) if t.dim() > 1 else t)


def rasterize_cpu(
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
    radius_clip: float = 0.0,
    eps2d: float = EPS2D,
):
    """See `neuralgs_ns.render.rasterize`; this is its CPU path."""
    n = means.shape[0]
    n_cams = viewmats.shape[0]
    per_camera_colors = colors.dim() == (4 if sh_degree is not None else 3)

    # Non-finite Gaussians are dropped from the image (radius 0) and given zero gradients,
    # instead of turning whole tiles into NaN.
    gauss_dim = 1 if per_camera_colors else 0
    finite = _finite_rows(means) & _finite_rows(quats) & _finite_rows(scales) & _finite_rows(opacities)
    finite &= _finite_rows(colors, gauss_dim)
    if not bool(finite.all()):
        col_shape = [1] * colors.dim()
        col_shape[gauss_dim] = n
        means = torch.where(finite[:, None], means, torch.zeros_like(means))
        quats = torch.where(finite[:, None], quats, torch.ones_like(quats))
        scales = torch.where(finite[:, None], scales, torch.zeros_like(scales))
        opacities = torch.where(finite, opacities, torch.zeros_like(opacities))
        colors = torch.where(finite.view(col_shape), colors, torch.zeros_like(colors))

    radii, means2d, depths, conics, compensations = project(
        means, quats, scales, viewmats, Ks, width, height, near_plane, far_plane,
        eps2d=eps2d, radius_clip=radius_clip, antialiased=rasterize_mode == "antialiased",
    )
    radii = torch.where(finite[None], radii, torch.zeros_like(radii))
    opacities = opacities.expand(n_cams, n)
    if compensations is not None:
        opacities = opacities * compensations

    if sh_degree is not None:
        campos = torch.linalg.inv(viewmats)[:, :3, 3]
        dirs = means[None] - campos[:, None]
        shs = colors if per_camera_colors else colors.expand(n_cams, -1, -1, -1)
        colors = torch.clamp_min(spherical_harmonics(sh_degree, dirs, shs) + 0.5, 0.0)
    elif not per_camera_colors:
        colors = colors.expand(n_cams, -1, -1)

    if render_mode in ("RGB+D", "RGB+ED"):
        colors = torch.cat([colors, depths[..., None]], dim=-1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(n_cams, 1)], dim=-1)
    elif render_mode in ("D", "ED"):
        colors = depths[..., None]
        backgrounds = None
    if backgrounds is None:
        backgrounds = colors.new_zeros(n_cams, colors.shape[-1])

    dtype = means2d.dtype
    render, alphas = _RasterizeToPixels.apply(
        means2d, conics, colors.to(dtype), opacities.to(dtype), backgrounds.to(dtype),
        radii, depths, width, height, absgrad,
    )
    if render_mode in ("ED", "RGB+ED"):
        render = torch.cat([render[..., :-1], render[..., -1:] / alphas.clamp(min=1e-10)], dim=-1)

    info = {
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": radii,
        "means2d": means2d,
        "depths": depths,
        "conics": conics,
        "opacities": opacities,
        "tile_width": math.ceil(width / TILE_SIZE),
        "tile_height": math.ceil(height / TILE_SIZE),
        "tile_size": TILE_SIZE,
        "width": width,
        "height": height,
        "n_cameras": n_cams,
    }
    return render, alphas, info

"""A slow, dense, obviously-correct twin of `neuralgs_ns.render.rasterize`, for tests only.

`render_dense` evaluates every Gaussian at every pixel with plain PyTorch ops, so autograd
gives its gradients; nothing here is shared with the fast CPU path (`cpu.py`, `sh.py`,
`_cpu_kernels.py`), in the way gsplat's `_torch_impl.py` is an independent twin of its CUDA
kernels. It follows gsplat 1.4.0's `rasterization` (unpacked, tile size 16, eps2d 0.3, no
radius clip):

* projection: world -> camera with the OpenCV `viewmat`, pinhole `K`, the perspective
  Jacobian evaluated at the mean clamped to 1.3x the view frustum, 0.3 added to the 2D
  covariance diagonal; culled (radius 0) if the blurred determinant is <= 0, the depth is
  <= near or >= far, or the radius box lies outside the image;
* a Gaussian is drawn only on the 16x16 tiles its radius box overlaps;
* per pixel (centre x + 0.5, y + 0.5), front to back by depth (ties by index),
  alpha = min(0.999, opacity * exp(-sigma)), skipped if sigma < 0 or alpha < 1/255; a pixel
  stops, without blending that Gaussian, once its transmittance would fall to <= 1e-4.

Memory is O(C * H * W * N): keep scenes small (a few hundred Gaussians, ~64x64 pixels).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

TILE_SIZE = 16
EPS2D = 0.3
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices [N, 3, 3] from wxyz quaternions [N, 4] (any non-zero norm).

    Uses R = (w^2 - v.v) I + 2 v v^T + 2 w [v]_x (v = xyz), a different but equivalent form
    from the usual expanded matrix, so a typo in either shows up in the tests.
    """
    q = F.normalize(quats, dim=-1)
    w, v = q[..., :1], q[..., 1:]
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(q.shape[:-1] + (3, 3))
    eye = torch.eye(3, dtype=q.dtype, device=q.device)
    vv = (v * v).sum(-1, keepdim=True)
    return (w * w - vv)[..., None] * eye + 2.0 * v[..., :, None] * v[..., None, :] + 2.0 * w[..., None] * skew


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Real SH basis [..., (degree + 1)^2] at unit `dirs` [..., 3], 3DGS sign convention.

    The constants are derived from their closed forms (sqrt(k / pi)) rather than copied.
    """
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be 0-3, got {degree}")
    pi = math.pi
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, 0.5 * math.sqrt(1.0 / pi))]
    if degree >= 1:
        k1 = math.sqrt(3.0 / (4.0 * pi))
        out += [-k1 * y, k1 * z, -k1 * x]
    if degree >= 2:
        k2a = 0.5 * math.sqrt(15.0 / pi)
        k2b = 0.25 * math.sqrt(5.0 / pi)
        k2c = 0.25 * math.sqrt(15.0 / pi)
        out += [k2a * x * y, -k2a * y * z, k2b * (3.0 * z * z - 1.0), -k2a * x * z, k2c * (x * x - y * y)]
    if degree >= 3:
        k3a = 0.25 * math.sqrt(35.0 / (2.0 * pi))
        k3b = 0.5 * math.sqrt(105.0 / pi)
        k3c = 0.25 * math.sqrt(21.0 / (2.0 * pi))
        k3d = 0.25 * math.sqrt(7.0 / pi)
        k3e = 0.25 * math.sqrt(105.0 / pi)
        out += [
            -k3a * y * (3.0 * x * x - y * y),
            k3b * x * y * z,
            -k3c * y * (5.0 * z * z - 1.0),
            k3d * z * (5.0 * z * z - 3.0),
            -k3c * x * (5.0 * z * z - 1.0),
            k3e * z * (x * x - y * y),
            -k3a * x * (x * x - 3.0 * y * y),
        ]
    return torch.stack(out, dim=-1)


def sh_to_color(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Colour [..., 3] of SH `coeffs` [..., K, 3] (first (degree+1)^2 used) along `dirs` [..., 3].

    Note: the degree-2/3 bases above use x^2 + y^2 + z^2 = 1, so `dirs` are normalised here.
    """
    n = (degree + 1) ** 2
    basis = sh_basis(degree, F.normalize(dirs, dim=-1))
    return torch.einsum("...k,...kd->...d", basis, coeffs[..., :n, :])


def project_dense(means, quats, scales, viewmats, Ks, width, height, near_plane=0.01, far_plane=1e10,
                  antialiased=False):
    """Projects 3D Gaussians [N] into C pinhole cameras.

    Returns a dict: radii [C, N] int32 (0 = culled), means2d [C, N, 2] pixels, depths [C, N]
    (camera z), conics [C, N, 3] (a, b, c of the inverse blurred 2D covariance
    [[a, b], [b, c]]), compensations [C, N] (sqrt(det / det_blurred), or None), and
    valid [C, N] bool. Values of culled Gaussians are finite placeholders.
    """
    rot_c = viewmats[:, :3, :3]
    means_c = torch.einsum("cij,nj->cni", rot_c, means) + viewmats[:, None, :3, 3]
    # Sigma_c = A A^T with A = R_cam R_gauss diag(s).
    a_mat = torch.einsum("cij,njk->cnik", rot_c, quat_to_rotmat(quats) * scales[:, None, :])
    cov_c = a_mat @ a_mat.transpose(-1, -2)

    x, y, z = means_c.unbind(-1)
    in_depth = (z > near_plane) & (z < far_plane)
    # Placeholder depth for culled Gaussians, so no 1/z ever produces inf or NaN gradients.
    zs = torch.where(in_depth, z, torch.ones_like(z))
    fx, fy = Ks[:, None, 0, 0], Ks[:, None, 1, 1]
    cx, cy = Ks[:, None, 0, 2], Ks[:, None, 1, 2]
    u, v = x / zs, y / zs
    # Jacobian point clamped to 1.3x the frustum (gsplat's persp_proj).
    u_c = u.clamp(min=-(cx / fx + 0.15 * width / fx), max=(width - cx) / fx + 0.15 * width / fx)
    v_c = v.clamp(min=-(cy / fy + 0.15 * height / fy), max=(height - cy) / fy + 0.15 * height / fy)
    zero = torch.zeros_like(zs)
    jac = torch.stack([fx / zs, zero, -fx * u_c / zs, zero, fy / zs, -fy * v_c / zs], -1).reshape(zs.shape + (2, 3))
    cov2d = jac @ cov_c @ jac.transpose(-1, -2)
    cov2d = 0.5 * (cov2d + cov2d.transpose(-1, -2))
    means2d = torch.stack([fx * u + cx, fy * v + cy], dim=-1)

    det_raw = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] ** 2
    eye2 = torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    cov2d = cov2d + EPS2D * eye2
    det = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] ** 2
    valid = in_depth & (det > 0)
    cov2d = torch.where(valid[..., None, None], cov2d, eye2)
    inv = torch.linalg.inv(cov2d)
    conics = torch.stack([inv[..., 0, 0], inv[..., 0, 1], inv[..., 1, 1]], dim=-1)

    with torch.no_grad():
        half_tr = 0.5 * (cov2d[..., 0, 0] + cov2d[..., 1, 1])
        det_v = torch.where(valid, det, torch.ones_like(det))
        lam = half_tr + torch.sqrt(torch.clamp(half_tr**2 - det_v, min=0.01))
        radius = torch.ceil(3.0 * torch.sqrt(lam))
        mx, my = means2d.unbind(-1)
        valid = valid & (mx + radius > 0) & (mx - radius < width) & (my + radius > 0) & (my - radius < height)
        radii = torch.where(valid, radius, torch.zeros_like(radius)).to(torch.int32)

    compensations = None
    if antialiased:
        ratio = det_raw / torch.where(valid, det, torch.ones_like(det))
        # d sqrt(r)/dr is infinite at r = 0 (zero-scale Gaussians): treat it as 0 there.
        pos = ratio > 0
        compensations = torch.where(pos, torch.sqrt(torch.where(pos, ratio, torch.ones_like(ratio))), torch.zeros_like(ratio))
    return dict(radii=radii, means2d=means2d, depths=z, conics=conics, compensations=compensations, valid=valid)


def _tile_mask(means2d: Tensor, radii: Tensor, width: int, height: int) -> Tensor:
    """[H, W, N] bool: pixel lies in a 16x16 tile overlapped by the Gaussian's radius box.

    means2d [N, 2], radii [N] for one camera. Tile range per axis: [floor((m - r) / 16),
    ceil((m + r) / 16)) clamped to the tile grid; culled Gaussians (r = 0) overlap nothing.
    """
    tiles_x, tiles_y = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    m = means2d.detach()
    r = radii.to(m.dtype)
    tx0 = torch.floor((m[:, 0] - r) / TILE_SIZE).clamp(0, tiles_x)
    tx1 = torch.ceil((m[:, 0] + r) / TILE_SIZE).clamp(0, tiles_x)
    ty0 = torch.floor((m[:, 1] - r) / TILE_SIZE).clamp(0, tiles_y)
    ty1 = torch.ceil((m[:, 1] + r) / TILE_SIZE).clamp(0, tiles_y)
    ptx = (torch.arange(width, device=m.device) // TILE_SIZE).to(m.dtype)
    pty = (torch.arange(height, device=m.device) // TILE_SIZE).to(m.dtype)
    in_x = (ptx[:, None] >= tx0) & (ptx[:, None] < tx1)  # [W, N]
    in_y = (pty[:, None] >= ty0) & (pty[:, None] < ty1)  # [H, N]
    return in_y[:, None, :] & in_x[None, :, :] & (radii > 0)


def composite_dense(means2d, conics, opacities, colors, depths, radii, background, width, height,
                    pixel_hook=None):
    """Front-to-back alpha compositing of one camera, every pixel against every Gaussian.

    means2d [N, 2], conics [N, 3], opacities [N], colors [N, D], depths [N], radii [N],
    background [D]. `pixel_hook`, if given, is registered on the per-pixel copy of means2d
    [H, W, N, 2] (its gradient is d loss / d means2d pixel by pixel: used for absgrad).
    Returns render [H, W, D], final transmittance [H, W] and the number of pixels the
    1e-4 early stop cut short.
    """
    n = means2d.shape[0]
    ys = torch.arange(height, dtype=means2d.dtype, device=means2d.device) + 0.5
    xs = torch.arange(width, dtype=means2d.dtype, device=means2d.device) + 0.5
    m = means2d[None, None].expand(height, width, n, 2)
    if pixel_hook is not None and m.requires_grad:
        m.register_hook(pixel_hook)
    dx = m[..., 0] - xs[None, :, None]
    dy = m[..., 1] - ys[:, None, None]
    ca, cb, cc = conics.unbind(-1)
    sigma = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
    alpha = torch.clamp(opacities * torch.exp(-sigma), max=ALPHA_MAX)
    drawn = _tile_mask(means2d, radii, width, height) & (sigma >= 0) & (alpha >= ALPHA_MIN)
    alpha = torch.where(drawn, alpha, torch.zeros_like(alpha))

    order = torch.sort(depths.detach(), stable=True).indices
    alpha = alpha[..., order]
    colors = colors[order]
    # The pixel stops at the first Gaussian that would take T to <= 1e-4; T is monotone, so
    # "T including this Gaussian stays > 1e-4" selects exactly the blended prefix.
    keep = torch.cumprod(1.0 - alpha.detach(), dim=-1) > T_MIN
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
    one_minus = 1.0 - alpha
    t_before = torch.cumprod(torch.cat([torch.ones_like(one_minus[..., :1]), one_minus[..., :-1]], -1), -1)
    t_final = torch.prod(one_minus, dim=-1)
    render = torch.einsum("hwn,nd->hwd", alpha * t_before, colors) + t_final[..., None] * background
    n_stopped = int((~keep).any(-1).sum()) if n else 0
    return render, t_final, n_stopped


def render_dense(
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
    """Dense reference for `neuralgs_ns.render.rasterize` (same arguments and outputs).

    Args: as `rasterize`: means [N, 3], quats [N, 4] wxyz, scales [N, 3], opacities [N],
    colors [N, D] / [C, N, D] (or SH [N, K, 3] / [C, N, K, 3] with `sh_degree`),
    viewmats [C, 4, 4], Ks [C, 3, 3], backgrounds [C, D] or None. Inputs must be finite.

    Returns renders [C, H, W, D'] (D' = D, D + 1 for "RGB+D"/"RGB+ED", 1 for "D"/"ED"),
    alphas [C, H, W, 1] and info with radii [C, N] int32, means2d [C, N, 2] (in the graph;
    with `absgrad`, `means2d.absgrad` [C, N, 2] is filled in during backward with the sum over
    pixels of |d loss / d means2d|), depths, conics, opacities (after compensation),
    width, height, n_cameras and n_early_stop [C] (pixels cut short by the 1e-4 rule).
    """
    n_cams = viewmats.shape[0]
    proj = project_dense(means, quats, scales, viewmats, Ks, width, height, near_plane, far_plane,
                         antialiased=rasterize_mode == "antialiased")
    radii, means2d, depths, conics = proj["radii"], proj["means2d"], proj["depths"], proj["conics"]
    opac = opacities[None].expand(n_cams, -1)
    if proj["compensations"] is not None:
        opac = opac * proj["compensations"]

    per_camera = colors.dim() == (4 if sh_degree is not None else 3)
    if not per_camera:
        colors = colors[None].expand(n_cams, *colors.shape)
    if sh_degree is not None:
        # Camera centre = -R^T t for a rigid world-to-camera matrix.
        rot, trans = viewmats[:, :3, :3], viewmats[:, :3, 3]
        centres = -torch.einsum("cji,cj->ci", rot, trans)
        colors = torch.clamp_min(sh_to_color(sh_degree, means[None] - centres[:, None], colors) + 0.5, 0.0)

    if backgrounds is None:
        backgrounds = colors.new_zeros(n_cams, colors.shape[-1])
    if render_mode in ("RGB+D", "RGB+ED"):
        colors = torch.cat([colors, depths[..., None]], dim=-1)
        backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(n_cams, 1)], dim=-1)
    elif render_mode in ("D", "ED"):
        colors = depths[..., None]
        backgrounds = colors.new_zeros(n_cams, 1)

    absgrads = torch.zeros_like(means2d.detach()) if absgrad else None

    def hook_for(c):
        def hook(grad):
            absgrads[c] = grad.abs().sum(dim=(0, 1))
        return hook

    renders, alphas, stopped = [], [], []
    for c in range(n_cams):
        render, t_final, n_stop = composite_dense(
            means2d[c], conics[c], opac[c], colors[c], depths[c], radii[c], backgrounds[c], width, height,
            pixel_hook=hook_for(c) if absgrad else None,
        )
        renders.append(render)
        alphas.append((1.0 - t_final)[..., None])
        stopped.append(n_stop)
    renders = torch.stack(renders)
    alphas = torch.stack(alphas)
    if render_mode in ("ED", "RGB+ED"):
        renders = torch.cat([renders[..., :-1], renders[..., -1:] / alphas.clamp(min=1e-10)], dim=-1)
    if absgrad:
        means2d.absgrad = absgrads

    info = dict(
        radii=radii, means2d=means2d, depths=depths, conics=conics, opacities=opac,
        width=width, height=height, n_cameras=n_cams, n_early_stop=stopped, gaussian_ids=None,
    )
    return renders, alphas, info

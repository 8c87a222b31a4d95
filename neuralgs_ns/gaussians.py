"""The Gaussians record and the transforms that move it; its files are `neuralgs_ns.formats`.

Parameters are stored the way splatfacto and the Inria 3DGS PLY store them: log scales,
logit opacities, wxyz quaternions (any norm), SH coefficients split into the DC term and
the rest. The `activated_*` properties give what `rasterize` takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Optional

import torch
from torch import Tensor

SPLATFACTO_PREFIX = "_model.gauss_params."
SH_C0 = 0.28209479177387814  # degree-0 SH basis value: colour = SH_C0 * dc + 0.5
PARAM_NAMES = ("means", "scales", "quats", "opacities", "features_dc", "features_rest")


@dataclass
class Gaussians:
    means: Tensor  # [N, 3] world positions
    scales: Tensor  # [N, 3] log scales
    quats: Tensor  # [N, 4] wxyz, any norm
    opacities: Tensor  # [N, 1] logits
    features_dc: Tensor  # [N, 3] SH degree-0 coefficients
    features_rest: Tensor  # [N, K - 1, 3] higher SH coefficients (K = (degree + 1)^2)

    def __post_init__(self):
        n = self.means.shape[0]
        expected = {"means": (n, 3), "scales": (n, 3), "quats": (n, 4), "opacities": (n, 1), "features_dc": (n, 3)}
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"Gaussians.{name} has shape {tuple(getattr(self, name).shape)}, expected {shape}")
        rest = self.features_rest
        if rest.dim() != 3 or rest.shape[0] != n or rest.shape[2] != 3 or _sh_degree_of(rest.shape[1] + 1) is None:
            raise ValueError(f"Gaussians.features_rest has shape {tuple(rest.shape)}, expected [{n}, (d+1)^2 - 1, 3]")

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return _sh_degree_of(self.features_rest.shape[1] + 1)

    @property
    def activated_scales(self) -> Tensor:
        return torch.exp(self.scales)

    @property
    def activated_opacities(self) -> Tensor:
        return torch.sigmoid(self.opacities[:, 0])

    @property
    def sh_coeffs(self) -> Tensor:
        """All SH coefficients [N, K, 3]."""
        return torch.cat([self.features_dc[:, None, :], self.features_rest], dim=1)

    def to(self, device) -> "Gaussians":
        return Gaussians(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def subset(self, index: Tensor) -> "Gaussians":
        """The Gaussians selected by a boolean mask or an index tensor."""
        return Gaussians(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def non_finite_count(self) -> int:
        bad = torch.zeros(len(self), dtype=torch.bool, device=self.means.device)
        for f in fields(self):
            bad |= ~torch.isfinite(getattr(self, f.name)).flatten(1).all(-1)
        return int(bad.sum())

    def render(self, viewmats: Tensor, Ks: Tensor, width: int, height: int, **kwargs):
        """`rasterize` with these Gaussians' activated parameters and full SH degree."""
        from neuralgs_ns.render import rasterize

        return rasterize(self.means, self.quats, self.activated_scales, self.activated_opacities,
                         self.sh_coeffs, viewmats, Ks, width, height, sh_degree=self.sh_degree, **kwargs)


def _sh_degree_of(n_coeffs: int) -> Optional[int]:
    degree = int(round(math.sqrt(n_coeffs))) - 1
    return degree if (degree + 1) ** 2 == n_coeffs and 0 <= degree <= 3 else None


# --- files ---------------------------------------------------------------------------------

_MOVED_TO_FORMATS = {"read_ply", "write_ply", "ply_bytes", "ply_size", "ply_columns", "teacher_bytes", "load_teacher",
                     "find_checkpoint", "read_splatfacto_checkpoint"}


def __getattr__(name: str):
    """The readers and writers live in `neuralgs_ns.formats`; their old names here still work.
    Looked up on first use, since `formats` imports this module (a top-level import would be a
    cycle)."""
    if name in _MOVED_TO_FORMATS:
        from neuralgs_ns import formats

        return getattr(formats, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _rotmat_to_quat(rot: Tensor) -> Tensor:
    """wxyz unit quaternion [4] of a rotation matrix [3, 3] (Shepperd's method)."""
    m = rot.double()
    trace = m.trace()
    if trace > 0:
        s = 2.0 * torch.sqrt(trace + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(torch.argmax(torch.diagonal(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * torch.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0] * 4
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    return torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in q]).float()


def _quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a * b of wxyz quaternions (broadcasting)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], dim=-1)


def sh_rotation(rot: Tensor, degree: int) -> Tensor:
    """[K-1, K-1] block-diagonal matrix M (K = (degree + 1)^2) such that a Gaussian rotated by
    `rot` [3, 3] with its SH rest coefficients [K-1, 3] replaced by M @ rest shows in every
    direction R d the colour it showed in d. Each band's block is the least-squares solution
    of Y_l(R^T d) = D_l Y_l(d) over fixed sample directions, in the renderer's own basis
    (`render.sh.sh_bases`), so it matches that basis's signs and ordering by construction."""
    from neuralgs_ns.render.sh import sh_bases

    k = (degree + 1) ** 2
    rot = rot.double().cpu()
    dirs = torch.nn.functional.normalize(torch.randn(256, 3, generator=torch.Generator().manual_seed(0),
                                                     dtype=torch.float64), dim=-1)
    basis, rotated = sh_bases(degree, dirs), sh_bases(degree, dirs @ rot)  # d @ R = (R^T d)^T
    matrix = torch.zeros(k - 1, k - 1, dtype=torch.float64)
    for band in range(1, degree + 1):
        cols = slice(band * band, (band + 1) ** 2)
        # rotated[:, cols] = basis[:, cols] @ D^T  ->  colour c' = D^T c
        d_transposed = torch.linalg.lstsq(basis[:, cols], rotated[:, cols]).solution
        matrix[cols.start - 1 : cols.stop - 1, cols.start - 1 : cols.stop - 1] = d_transposed
    return matrix.float()


def transform_gaussians(gaussians: Gaussians, transform: Tensor, scale: float) -> Gaussians:
    """Gaussians moved by x -> scale * (R x + t), `transform` = [R | t] [3, 4] (nerfstudio's
    dataparser transform), their view-dependent colour (SH bands 1-3) rotated with them."""
    rot, t = transform[:3, :3].float(), transform[:3, 3].float()
    q_rot = _rotmat_to_quat(rot).to(gaussians.quats)
    rest = gaussians.features_rest
    if rest.shape[1] > 0:
        rest = torch.einsum("ij,njc->nic", sh_rotation(rot, gaussians.sh_degree).to(rest), rest)
    return Gaussians(
        means=scale * (gaussians.means @ rot.T + t),
        scales=gaussians.scales + math.log(scale),
        quats=_quat_multiply(q_rot, torch.nn.functional.normalize(gaussians.quats, dim=-1)),
        opacities=gaussians.opacities,
        features_dc=gaussians.features_dc,
        features_rest=rest,
    )

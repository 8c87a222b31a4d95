"""The Gaussians record and its readers and writers (splatfacto checkpoints, 3DGS PLY).

Parameters are stored the way splatfacto and the Inria 3DGS PLY store them: log scales,
logit opacities, wxyz quaternions (any norm), SH coefficients split into the DC term and
the rest. The `activated_*` properties give what `rasterize` takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from neuralgs_ns.errors import InputFileError
from neuralgs_ns.utils import atomic_write_bytes

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


# --- splatfacto checkpoints -------------------------------------------------------------

def find_checkpoint(path: Path) -> Path:
    """The checkpoint a user means by PATH: a .ckpt file, a run directory (its latest
    nerfstudio_models/step-*.ckpt) or that run's config.yml."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "no such file or directory")
    if path.is_file() and path.suffix == ".ckpt":
        return path
    run_dir = path.parent if path.is_file() and path.suffix in (".yml", ".yaml") else path
    if not run_dir.is_dir():
        raise InputFileError(path, "expected a .ckpt, a .ply, a nerfstudio run directory or its config.yml")
    ckpts = sorted((run_dir / "nerfstudio_models").glob("step-*.ckpt"), key=lambda p: int(p.stem.split("-")[1]))
    if not ckpts:
        raise InputFileError(path, f"no checkpoint found in {run_dir / 'nerfstudio_models'}")
    return ckpts[-1]


def read_splatfacto_checkpoint(path: Path) -> Gaussians:
    """Gaussians of a splatfacto (or splatfacto-portable / neuralgs) checkpoint."""
    path = Path(path)
    try:
        # weights_only=False only on the file the user named: nerfstudio checkpoints hold
        # optimizer and scheduler state that the safe loader refuses.
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or not a torch file at all
        raise InputFileError(path, f"not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from None
    state = ckpt.get("pipeline") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise InputFileError(path, "not a nerfstudio checkpoint (no 'pipeline' state)")
    missing = [n for n in PARAM_NAMES if SPLATFACTO_PREFIX + n not in state]
    if missing:
        raise InputFileError(path, "not a Gaussian-splatting checkpoint (no "
                             f"{SPLATFACTO_PREFIX}{missing[0]}; splatfacto runs have one, nerfacto runs don't)")
    params = {n: state[SPLATFACTO_PREFIX + n].detach().float() for n in PARAM_NAMES}
    if params["opacities"].dim() == 1:
        params["opacities"] = params["opacities"][:, None]
    if params["features_rest"].dim() == 3 and params["features_rest"].shape[1] == 0:
        # splatfacto with sh_degree 0 keeps logit RGB in features_dc, not an SH coefficient.
        params["features_dc"] = (torch.sigmoid(params["features_dc"]) - 0.5) / SH_C0
    try:
        return Gaussians(**params)
    except ValueError as err:
        raise InputFileError(path, str(err)) from None


# --- Inria 3DGS PLY ---------------------------------------------------------------------

def read_ply(path: Path) -> Gaussians:
    """Gaussians of a standard 3DGS PLY (Inria layout, SH degree 0-3, normals optional)."""
    from plyfile import PlyData

    path = Path(path)
    try:
        ply = PlyData.read(str(path))
    except Exception as err:
        raise InputFileError(path, f"not a readable PLY file ({type(err).__name__}: {err})") from None
    if "vertex" not in ply:
        raise InputFileError(path, "PLY has no vertex element")
    vertex = ply["vertex"].data
    names = set(vertex.dtype.names)
    required = ["x", "y", "z", "opacity", "f_dc_0", "f_dc_1", "f_dc_2",
                "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [r for r in required if r not in names]
    if missing:
        hint = " (this looks like a mesh or point cloud, not 3D Gaussians)" if "face" in ply or "opacity" not in names else ""
        raise InputFileError(path, f"not a 3DGS PLY: missing {', '.join(missing[:4])}{'...' if len(missing) > 4 else ''}{hint}")
    n_rest = len([nm for nm in names if nm.startswith("f_rest_")])
    degree = _sh_degree_of(n_rest // 3 + 1)
    if n_rest % 3 or degree is None:
        raise InputFileError(path, f"{n_rest} f_rest_* properties do not match an SH degree of 0-3")

    def cols(keys):
        return torch.from_numpy(np.stack([np.asarray(vertex[k], dtype=np.float32) for k in keys], axis=-1))

    n = len(vertex)
    k_rest = n_rest // 3
    # Inria stores the rest coefficients channel-major: f_rest_{c * (K - 1) + k}.
    rest = cols([f"f_rest_{i}" for i in range(n_rest)]) if n_rest else torch.zeros(n, 0)
    return Gaussians(
        means=cols(["x", "y", "z"]),
        scales=cols(["scale_0", "scale_1", "scale_2"]),
        quats=cols(["rot_0", "rot_1", "rot_2", "rot_3"]),
        opacities=cols(["opacity"]),
        features_dc=cols(["f_dc_0", "f_dc_1", "f_dc_2"]),
        features_rest=rest.reshape(n, 3, k_rest).transpose(1, 2).contiguous(),
    )


def ply_columns(gaussians: Gaussians, normals: bool = True):
    """(name, values [N]) of every Inria 3DGS PLY property, in file order; the (zero) normals
    3DGS writes are left out with normals=False, as many exporters do."""
    g = gaussians.to("cpu")
    n = len(g)
    rest = g.features_rest.transpose(1, 2).flatten(1)
    columns = [("x", g.means[:, 0]), ("y", g.means[:, 1]), ("z", g.means[:, 2])]
    columns += [(f"n{a}", torch.zeros(n)) for a in "xyz"] if normals else []
    columns += [(f"f_dc_{i}", g.features_dc[:, i]) for i in range(3)]
    columns += [(f"f_rest_{i}", rest[:, i]) for i in range(rest.shape[1])]
    columns += [("opacity", g.opacities[:, 0])]
    columns += [(f"scale_{i}", g.scales[:, i]) for i in range(3)]
    columns += [(f"rot_{i}", g.quats[:, i]) for i in range(4)]
    return columns


def _ply_header(n: int, names) -> bytes:
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    lines += [f"property float {name}" for name in names] + ["end_header", ""]
    return "\n".join(lines).encode("ascii")


def ply_bytes(gaussians: Gaussians, normals: bool = True) -> bytes:
    """The Inria 3DGS binary little-endian PLY of `gaussians` (with zero normals, as 3DGS
    writes them, unless normals=False), vectorised: one structured numpy array, no per-vertex
    Python."""
    columns = ply_columns(gaussians, normals)
    table = np.empty(len(gaussians), dtype=[(name, "<f4") for name, _ in columns])
    for name, values in columns:
        table[name] = values.detach().numpy()
    return _ply_header(len(gaussians), [name for name, _ in columns]) + table.tobytes()


def ply_size(gaussians: Gaussians) -> int:
    """Bytes of `ply_bytes(gaussians)`, without building it."""
    names = [name for name, _ in ply_columns(gaussians.subset(slice(0, 0)))]
    return len(_ply_header(len(gaussians), names)) + 4 * len(names) * len(gaussians)


def write_ply(gaussians: Gaussians, path: Path, normals: bool = True) -> None:
    atomic_write_bytes(Path(path), ply_bytes(gaussians, normals))


def teacher_bytes(path: Path, gaussians: Gaussians) -> int:
    """What a compression ratio divides: the teacher file's size on disk when the user gave a
    splat file, else (a checkpoint, whose file also holds optimiser state) the Inria 3DGS PLY
    of it that `ns-export gaussian-splat` and `write_ply` write."""
    path = Path(path)
    if path.suffix.lower() == ".ply" and path.is_file():
        return path.stat().st_size
    return ply_size(gaussians)


# --- any teacher ------------------------------------------------------------------------

def load_teacher(path: Path) -> Gaussians:
    """Gaussians from a 3DGS .ply, a splatfacto .ckpt, its run directory or its config.yml.
    Raises InputFileError (one line, naming the file) for anything else."""
    path = Path(path)
    if path.suffix.lower() == ".ply":
        if not path.is_file():
            raise InputFileError(path, "no such file")
        gaussians = read_ply(path)
    else:
        gaussians = read_splatfacto_checkpoint(find_checkpoint(path))
    if len(gaussians) == 0:
        raise InputFileError(path, "holds zero Gaussians")
    bad = gaussians.non_finite_count()
    if bad:
        raise InputFileError(path, f"{bad} of {len(gaussians)} Gaussians have NaN or Inf parameters")
    return gaussians


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

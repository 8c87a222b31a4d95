"""The Inria 3DGS PLY: float32 properties as 3DGS writes them, or float16 ('property half') as
some exporters write them to halve the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from neuralgs_ns.errors import InputFileError
from neuralgs_ns.gaussians import Gaussians, _sh_degree_of
from neuralgs_ns.utils import atomic_write_bytes

REQUIRED = ("x", "y", "z", "opacity", "f_dc_0", "f_dc_1", "f_dc_2",
            "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
HALF_MAX = float(np.finfo(np.float16).max)  # 65504

# PLY scalar types as numpy little-endian dtypes; 'half' is outside the PLY spec's list, so
# plyfile (and the Inria viewer) refuse it and files using it are parsed here.
_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "<i2", "int16": "<i2",
              "ushort": "<u2", "uint16": "<u2", "int": "<i4", "int32": "<i4", "uint": "<u4", "uint32": "<u4",
              "float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8", "half": "<f2", "float16": "<f2"}


def read_ply(path: Path) -> Gaussians:
    """Gaussians of a 3DGS PLY (Inria layout, SH degree 0-3, normals optional)."""
    path = Path(path)
    vertex, elements = _vertex_table(path)
    if vertex is None:
        raise InputFileError(path, "PLY has no vertex element")
    names = set(vertex.dtype.names)
    missing = [r for r in REQUIRED if r not in names]
    if missing:
        hint = " (this looks like a mesh or point cloud, not 3D Gaussians)" if "face" in elements or "opacity" not in names else ""
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


def _vertex_table(path: Path):
    """(vertex structured array or None, element names) of a PLY file."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)  # a 3DGS header is well under 64 KiB
        if b"end_header" in head and any(line.split()[:2] == [b"property", b"half"] for line in
                                         head.split(b"end_header", 1)[0].splitlines()):
            return _read_binary_little_endian(path)
        from plyfile import PlyData

        ply = PlyData.read(str(path))
    except InputFileError:
        raise
    except Exception as err:
        raise InputFileError(path, f"not a readable PLY file ({type(err).__name__}: {err})") from None
    elements = {e.name for e in ply.elements}
    return (ply["vertex"].data if "vertex" in elements else None), elements


def ply_has_normals(path: Path) -> bool:
    """Whether a PLY file's vertices have normals (nx, ...): 3DGS writes zero ones, many
    exporters leave them out."""
    with open(path, "rb") as f:
        header = f.read(1 << 16).split(b"end_header", 1)[0]  # a 3DGS header is well under 64 KiB
    return any(line.split()[-1:] == [b"nx"] for line in header.splitlines() if line.startswith(b"property"))


def _read_binary_little_endian(path: Path):
    """The vertex table of a binary little-endian PLY whose first element is 'vertex', with any
    scalar property types (half included); later elements are not read."""
    data = path.read_bytes()
    end = data.index(b"end_header") + len(b"end_header")
    end += 2 if data[end:end + 2] == b"\r\n" else 1
    lines = [line.split() for line in data[:end].decode("ascii", "replace").splitlines()]
    lines = [line for line in lines if line and line[0] not in ("comment", "obj_info")]
    if lines[0] != ["ply"] or lines[1] != ["format", "binary_little_endian", "1.0"]:
        raise InputFileError(path, "a PLY with 'half' properties must be binary little-endian")
    elements = [line[1] for line in lines if line[0] == "element"]
    if lines[2][:2] != ["element", "vertex"]:
        return None, set(elements)
    fields = []
    for line in lines[3:]:
        if line[0] != "property":
            break
        if line[1] == "list" or line[1] not in _PLY_TYPES:
            raise InputFileError(path, f"unsupported vertex property '{' '.join(line[1:])}'")
        fields.append((line[2], _PLY_TYPES[line[1]]))
    dtype = np.dtype(fields)
    n = int(lines[2][2])
    if len(data) - end < n * dtype.itemsize:
        raise InputFileError(path, f"not a readable PLY file (truncated: {n:,} vertices of {dtype.itemsize} bytes "
                             f"need {n * dtype.itemsize:,} bytes, {len(data) - end:,} present)")
    return np.frombuffer(data, dtype=dtype, count=n, offset=end), set(elements)


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


def _ply_header(n: int, names, ply_type: str = "float") -> bytes:
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    lines += [f"property {ply_type} {name}" for name in names] + ["end_header", ""]
    return "\n".join(lines).encode("ascii")


def _ply_table_bytes(gaussians: Gaussians, normals: bool, ply_type: str) -> bytes:
    """The whole file in one structured numpy array: no per-vertex Python."""
    columns = ply_columns(gaussians, normals)
    table = np.empty(len(gaussians), dtype=[(name, _PLY_TYPES[ply_type]) for name, _ in columns])
    for name, values in columns:
        values = values.detach().numpy()
        if ply_type == "half" and np.abs(values).max(initial=0) > HALF_MAX:
            raise ValueError(f"{name} reaches {np.abs(values).max():.6g}, beyond float16's {HALF_MAX:g}")
        table[name] = values
    return _ply_header(len(gaussians), [name for name, _ in columns], ply_type) + table.tobytes()


def ply_bytes(gaussians: Gaussians, normals: bool = True) -> bytes:
    """The Inria 3DGS binary little-endian PLY of `gaussians`, with zero normals as 3DGS writes
    them unless normals=False."""
    return _ply_table_bytes(gaussians, normals, "float")


def ply_fp16_bytes(gaussians: Gaussians) -> bytes:
    """The same layout with every property float16 ('property half'): half the size. Outside
    the PLY spec's type list: `read_ply` reads it, plyfile, splat-transform and the Inria
    viewer refuse it. Raises ValueError for values beyond float16's range."""
    return _ply_table_bytes(gaussians, True, "half")


def ply_size(gaussians: Gaussians) -> int:
    """Bytes of `ply_bytes(gaussians)`, without building it."""
    names = [name for name, _ in ply_columns(gaussians.subset(slice(0, 0)))]
    return len(_ply_header(len(gaussians), names)) + 4 * len(names) * len(gaussians)


def write_ply(gaussians: Gaussians, path: Path, normals: bool = True) -> None:
    atomic_write_bytes(Path(path), ply_bytes(gaussians, normals))

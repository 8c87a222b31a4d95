"""Every file format Gaussians are read from or written to, and the one table that maps a
file's suffix to its reader and writer (`FORMATS`). `neuralgs decode` writes through
`write_gaussians`, teachers load through `load_teacher`, `neuralgs bench` reads and writes
through the same functions. A folder is read as a nerfstudio run (its latest checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

from neuralgs_ns.errors import InputFileError, NeuralGSError
from neuralgs_ns.formats.checkpoint import find_checkpoint, read_checkpoint, read_splatfacto_checkpoint
from neuralgs_ns.formats.ply import (ply_bytes, ply_columns, ply_fp16_bytes, ply_has_normals, ply_size, read_ply,
                                     write_ply)
from neuralgs_ns.formats.sog import read_sog, sog_bytes
from neuralgs_ns.formats.splat import read_splat, splat_bytes
from neuralgs_ns.formats.spz import (SPZ_DEFAULT_VERSION, SPZ_VERSIONS, read_spz, read_spz_gsply, spz_bytes,
                                     write_spz_gsply)
from neuralgs_ns.gaussians import Gaussians
from neuralgs_ns.utils import atomic_write_bytes


@dataclass(frozen=True)
class Format:
    description: str
    read: Callable[[Path], Gaussians]
    """Gaussians of a file; raises InputFileError (one line, naming the file) for a bad one."""
    encode: Optional[Callable[..., bytes]] = None
    """The file's bytes of Gaussians (keyword options per format); None: read only."""


FORMATS: Dict[str, Format] = {
    ".ply": Format("Inria 3DGS PLY: float32 written; float16 ('property half', ply_fp16_bytes) read too",
                   read_ply, ply_bytes),
    ".spz": Format("Niantic SPZ: versions 2-4 written (SPZ_DEFAULT_VERSION unless asked), 1-4 read",
                   read_spz, spz_bytes),
    ".splat": Format("antimatter15 .splat (SH degree 0)", read_splat, splat_bytes),
    ".sog": Format("PlayCanvas SOG bundle, version 2", read_sog, sog_bytes),
    ".ckpt": Format("splatfacto checkpoint (read only)", read_checkpoint),
    ".yml": Format("nerfstudio run config: the run's latest checkpoint (read only)", read_checkpoint),
    ".yaml": Format("nerfstudio run config: the run's latest checkpoint (read only)", read_checkpoint),
}
EXPORT_FORMATS = tuple(suffix for suffix, f in FORMATS.items() if f.encode is not None)
"""The formats written: the files that hold Gaussians and nothing else."""


def _suffixes(suffixes) -> str:
    return ", ".join(suffixes[:-1]) + " or " + suffixes[-1]


def check_output_path(path: Path, spz_version: Optional[int] = None) -> None:
    """Raises NeuralGSError unless `write_gaussians` can write `path` (a known suffix, an
    existing folder, an SPZ version only for .spz): callers check before long work, so a typo
    costs nothing."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise NeuralGSError(f"{path}: unsupported output format '{path.suffix}' (use {_suffixes(EXPORT_FORMATS)})")
    if spz_version is not None and suffix != ".spz":
        raise NeuralGSError(f"{path}: an SPZ version applies to .spz outputs only")
    if not path.parent.is_dir():
        raise NeuralGSError(f"{path}: output directory {path.parent} does not exist")


def write_gaussians(gaussians: Gaussians, path: Path, *, spz_version: Optional[int] = None) -> None:
    """Writes `gaussians` to `path` in the format its suffix names (any case), atomically: a
    failure leaves no file, not a partial one. `spz_version` (.spz only) defaults to
    SPZ_DEFAULT_VERSION."""
    path = Path(path)
    check_output_path(path, spz_version)  # before encoding, which can take seconds for a large scene
    options = {} if spz_version is None else {"version": spz_version}
    try:
        data = FORMATS[path.suffix.lower()].encode(gaussians, **options)
    except NeuralGSError as err:  # the encoders don't know the path; name it
        raise NeuralGSError(f"{path}: {err}") from None
    atomic_write_bytes(path, data)


def read_gaussians(path: Path) -> Gaussians:
    """Gaussians of a file in any format of FORMATS, or of a nerfstudio run directory."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "no such file or directory")
    if path.is_dir():
        return read_checkpoint(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InputFileError(path, f"unknown format '{path.suffix}' (expected {_suffixes(list(FORMATS))}, "
                             "or a nerfstudio run directory)")
    return FORMATS[suffix].read(path)


def load_teacher(path: Path) -> Gaussians:
    """Gaussians of a teacher (any format of FORMATS, or a run directory), refused in one line
    naming the file when it holds none or any non-finite parameter."""
    gaussians = read_gaussians(path)
    if len(gaussians) == 0:
        raise InputFileError(path, "holds zero Gaussians")
    bad = gaussians.non_finite_count()
    if bad:
        raise InputFileError(path, f"{bad} of {len(gaussians)} Gaussians have NaN or Inf parameters")
    return gaussians


def teacher_bytes(path: Path, gaussians: Gaussians) -> int:
    """What a compression ratio divides: the teacher file's size on disk when the user gave a
    splat file (.ply, .spz, .splat, .sog), else (a checkpoint, whose file also holds optimiser
    state) the Inria 3DGS PLY of it that `ns-export gaussian-splat` and `write_ply` write."""
    path = Path(path)
    if path.suffix.lower() in EXPORT_FORMATS and path.is_file():
        return path.stat().st_size
    return ply_size(gaussians)


__all__ = ["EXPORT_FORMATS", "FORMATS", "Format", "SPZ_DEFAULT_VERSION", "SPZ_VERSIONS", "check_output_path",
           "find_checkpoint", "load_teacher", "ply_bytes", "ply_columns", "ply_fp16_bytes", "ply_has_normals", "ply_size",
           "read_checkpoint", "read_gaussians", "read_ply", "read_sog", "read_splat", "read_splatfacto_checkpoint",
           "read_spz", "read_spz_gsply", "sog_bytes", "splat_bytes", "spz_bytes", "teacher_bytes", "write_gaussians",
           "write_ply", "write_spz_gsply"]

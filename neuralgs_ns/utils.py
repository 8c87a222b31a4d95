"""Small shared helpers: atomic file writes, PNG encoding and camera construction."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import torch

from neuralgs_ns.errors import NeuralGSError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file in the same folder and a rename, so
    a crash, a full disk or an interrupt never leaves a half-written output behind. The file
    gets the mode a plain open() would (0644 under umask 022), not mkstemp's private 0600."""
    path = Path(path)
    if not path.parent.is_dir():
        raise NeuralGSError(f"{path}: output folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def png_bytes(array) -> bytes:
    """An image array [H, W, 3] uint8 as PNG file bytes."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def look_at_viewmats(n_views: int, radius: float, elevation_deg: float, target=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """World-to-camera matrices [n_views, 4, 4] (OpenCV axes: x right, y down, z forward) of
    cameras evenly spaced on a circle at `elevation_deg` above the z=0 plane, looking at `target`."""
    target_t = torch.tensor(target, dtype=torch.float32)
    mats = []
    el = math.radians(elevation_deg)
    for i in range(n_views):
        az = 2 * math.pi * i / n_views
        eye = target_t + radius * torch.tensor([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        forward = torch.nn.functional.normalize(target_t - eye, dim=0)
        right = torch.nn.functional.normalize(torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0])), dim=0)
        down = torch.linalg.cross(forward, right)
        rot = torch.stack([right, down, forward])  # rows: camera axes in world coordinates
        view = torch.eye(4)
        view[:3, :3] = rot
        view[:3, 3] = -rot @ eye
        mats.append(view)
    return torch.stack(mats)

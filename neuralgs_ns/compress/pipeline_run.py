"""Training views for `compress.run.compress`, and the view helpers the demo and benchmarks share.

With a dataset, its images are the targets. Without one, views are rendered from the teacher
on a sphere around the bulk of the scene, written as a blender-format dataset, and the
teacher's renders are the targets; the same trainer then runs on that dataset.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from neuralgs_ns.errors import InputFileError, NeuralGSError
from neuralgs_ns.gaussians import Gaussians


@dataclass
class TeacherViews:
    """Where and how to render training targets from the teacher when there is no dataset."""

    n_train: int = 96
    """Training views (Fibonacci sphere around the scene)."""
    n_val: int = 16
    """Held-out views (interleaved on the same sphere) for the PSNR report."""
    resolution: int = 256
    """Width and height of the rendered targets in pixels."""
    fov_deg: float = 50.0
    """Horizontal field of view of the virtual cameras."""
    distance: float = 2.2
    """Camera distance in units of the scene's radius (its 90th-percentile extent)."""


def scene_bulk(gaussians: Gaussians) -> tuple[torch.Tensor, float]:
    """Centre (median position) and radius (90th percentile distance to it) of the scene,
    robust to the stray far-away Gaussians real captures have."""
    centre = gaussians.means.median(dim=0).values
    radius = float(torch.quantile((gaussians.means - centre).norm(dim=-1).float().cpu(), 0.9))
    return centre, max(radius, 1e-6)


def _sphere_directions(n: int) -> np.ndarray:
    """n unit vectors spread evenly on the sphere (Fibonacci lattice)."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (3 - math.sqrt(5)) * i
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)


def _look_at_c2w_opengl(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Camera-to-world [4, 4] in Blender/OpenGL axes (x right, y up, looking down -z)."""
    forward = target - eye
    forward /= np.linalg.norm(forward)
    up = np.array([0.0, 0.0, 1.0]) if abs(forward[2]) < 0.99 else np.array([0.0, 1.0, 0.0])
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    true_up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, true_up, -forward, eye
    return c2w


def sphere_cameras(gaussians: Gaussians, n: int, views: TeacherViews) -> List[Tuple[np.ndarray, Tensor, Tensor]]:
    """(camera-to-world [4, 4] in OpenGL axes, world-to-camera viewmat [4, 4] in OpenCV axes,
    K [3, 3]) of `n` cameras on a Fibonacci sphere around the scene's bulk, looking at it."""
    centre, radius = scene_bulk(gaussians)
    centre = centre.cpu().numpy()
    size = views.resolution
    focal = 0.5 * size / math.tan(math.radians(views.fov_deg) / 2)
    K = torch.tensor([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1.0]])
    cameras = []
    for direction in _sphere_directions(n):
        c2w = _look_at_c2w_opengl(centre + views.distance * radius * direction, centre)
        c2w_cv = c2w.copy()
        c2w_cv[:3, 1:3] *= -1  # OpenGL -> OpenCV camera axes
        cameras.append((c2w, torch.from_numpy(np.linalg.inv(c2w_cv)).float(), K))
    return cameras


def held_out_mask(views: TeacherViews) -> np.ndarray:
    """[n_train + n_val] True for the held-out cameras of `sphere_cameras`' list: n_val of
    them spread evenly along the sphere."""
    n_total = views.n_train + views.n_val
    is_val = np.zeros(n_total, dtype=bool)
    is_val[np.linspace(0, n_total - 1, views.n_val).round().astype(int)] = True
    return is_val


@torch.no_grad()
def render_teacher_dataset(teacher: Gaussians, output_dir: Path, views: TeacherViews, device: str) -> Path:
    """Writes the teacher's renders as a blender-format dataset (RGBA PNGs, straight alpha)."""
    from PIL import Image

    from neuralgs_ns.progress import progress_bar

    size = views.resolution
    n_total = views.n_train + views.n_val
    cameras = sphere_cameras(teacher, n_total, views)
    teacher = teacher.to(device)
    is_val = held_out_mask(views)
    frames: Dict[str, list] = {"train": [], "val": []}
    with progress_bar("render teacher views", n_total) as advance:
        for i, (c2w, viewmat, K) in enumerate(cameras):
            split = "val" if is_val[i] else "train"
            rgb, alpha, _ = teacher.render(viewmat[None].to(device), K[None].to(device), size, size)
            alpha = alpha[0].clamp(0, 1)
            straight = torch.where(alpha > 1e-4, rgb[0] / alpha.clamp_min(1e-4), torch.zeros_like(rgb[0])).clamp(0, 1)
            rgba = torch.cat([straight, alpha], dim=-1).mul(255).round().byte().cpu().numpy()
            name = f"r_{len(frames[split])}"
            (output_dir / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgba, "RGBA").save(output_dir / split / f"{name}.png")
            frames[split].append({"file_path": f"./{split}/{name}", "transform_matrix": c2w.tolist()})
            advance()
    fov_x = math.radians(views.fov_deg)
    for split, name in (("train", "train"), ("val", "val"), ("val", "test")):
        (output_dir / f"transforms_{name}.json").write_text(json.dumps({"camera_angle_x": fov_x, "frames": frames[split]}))
    return output_dir


def psnr(image: Tensor, gt: Tensor) -> float:
    """PSNR in dB of images in [0, 1]."""
    return float(-10 * torch.log10(((image - gt) ** 2).mean().clamp_min(1e-10)))


@dataclass
class TeacherFrame:
    """Where a teacher sits relative to a dataset (`check_teacher_frame`)."""

    move: Optional[Callable[[Gaussians], Gaussians]]
    """Moves stored Gaussians into the dataset's frame; None: they are in it already."""
    choice: str
    summary: str
    """Mean PSNR of each candidate frame and of an empty render."""
    fits: bool
    """The chosen frame beats the empty render by the margin (else: the wrong dataset?)."""


def check_teacher_frame(teacher: Gaussians, is_ply: bool, transform: Tensor, scale: float,
                        views: Sequence[Tuple[Tensor, Tensor, int, int]], images: Sequence[Tensor],
                        margin_db: float) -> TeacherFrame:
    """Which frame `teacher` is in, judged on `views` (viewmat, K, width, height) against
    `images` [H, W, 3] on white: as stored, or, for a .ply from the original capture frame,
    moved by the dataparser's `transform` [3, 4] and `scale`. The NeuralGS model and the bench
    both check their teacher this way before any long work."""
    from functools import partial

    from neuralgs_ns.gaussians import transform_gaussians

    device = views[0][0].device
    white = torch.ones(1, 3, device=device)
    transform = transform.to(teacher.means.device).float()
    candidates: Dict[str, Optional[Callable[[Gaussians], Gaussians]]] = {"as stored": None}
    if is_ply and not (torch.allclose(transform, torch.eye(3, 4, device=transform.device)) and scale == 1.0):
        candidates["moved by the dataparser transform"] = partial(transform_gaussians, transform=transform, scale=scale)

    def mean_psnr(g: Gaussians) -> float:
        g = g.to(device)
        with torch.no_grad():
            return float(np.mean([psnr(g.render(viewmat[None], K[None], w, h, backgrounds=white)[0][0].clamp(0, 1),
                                       image.to(device)) for (viewmat, K, w, h), image in zip(views, images)]))

    scores = {name: mean_psnr(teacher if move is None else move(teacher)) for name, move in candidates.items()}
    empty = float(np.mean([psnr(torch.ones_like(image), image) for image in images]))
    best = max(scores, key=scores.get)
    summary = ", ".join(f"{name}: {value:.1f} dB" for name, value in scores.items()) + f", empty render: {empty:.1f} dB"
    return TeacherFrame(candidates[best], best, summary, scores[best] >= empty + margin_db)


def frame_check_indices(n_views: int, n_checked: int) -> List[int]:
    """`n_checked` views spread evenly over `n_views` (the frame check's sample)."""
    return np.linspace(0, n_views - 1, min(n_checked, n_views)).round().astype(int).tolist()


def dataset_views(data: Path, split: str, downscale: Optional[int] = None) -> List[tuple]:
    """(viewmat [4, 4], K [3, 3], width, height, image [H, W, 3] on white) of every view of
    `split`, in the dataparser's frame (the frame a nerfstudio teacher was trained in). RGBA
    images are composited on white, as nerfstudio's blender dataparser does."""
    from PIL import Image

    from neuralgs_ns.models.portable_splatfacto import get_viewmat

    outputs = dataparser_for(data, downscale).setup().get_dataparser_outputs(split)
    views = []
    for i in range(len(outputs.cameras)):
        camera = outputs.cameras[i : i + 1]
        image = np.asarray(Image.open(outputs.image_filenames[i])).astype(np.float32) / 255
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        if image.shape[-1] == 4:
            image = image[..., :3] * image[..., 3:] + (1 - image[..., 3:])
        views.append((get_viewmat(camera.camera_to_worlds)[0], camera.get_intrinsics_matrices()[0],
                      int(camera.width.item()), int(camera.height.item()), torch.from_numpy(image[..., :3].copy())))
    return views


COLMAP_MODEL_DIRS = ("sparse/0", "colmap/sparse/0", "sparse")
"""Where a dataset folder may hold its COLMAP model: COLMAP's own layout (images/ beside
sparse/0) and `ns-process-data`'s (colmap/sparse/0)."""
MAX_AUTO_RESOLUTION = 1600
"""--downscale's default halves the images until their longest side is at most this (nerfstudio's rule)."""


def colmap_model_dir(data: Path) -> Optional[Path]:
    """The COLMAP model folder of `data` (relative to it), or None."""
    for rel in COLMAP_MODEL_DIRS:
        if any((data / rel / f"cameras{ext}").is_file() for ext in (".bin", ".txt")):
            return Path(rel)
    return None


def dataset_kind(data: Path) -> str:
    """'blender', 'nerfstudio' or 'colmap', from the files in the dataset folder `data`."""
    if (data / "transforms_train.json").is_file():
        return "blender"
    if (data / "transforms.json").is_file():
        return "nerfstudio"
    if colmap_model_dir(data) is not None:
        return "colmap"
    raise InputFileError(data, "not a dataset folder (no transforms_train.json, transforms.json or COLMAP "
                               f"model in {' or '.join(COLMAP_MODEL_DIRS)})")


def dataparser_for(data: Path, downscale: Optional[int] = None):
    """nerfstudio dataparser config for a dataset folder: blender (transforms_train.json),
    nerfstudio (transforms.json) or COLMAP (a model in sparse/0 or colmap/sparse/0, images in
    images/). `downscale`: divide the images' size by this (nerfstudio's images_N folders,
    written here with PIL where missing); None: the smallest power of two that brings the
    longest side to at most MAX_AUTO_RESOLUTION. Blender datasets are used as they are."""
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
    from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    data = Path(data)
    if downscale is not None and downscale < 1:
        raise NeuralGSError(f"--downscale must be 1 or more, got {downscale}")
    kind = dataset_kind(data)
    if kind == "blender":
        if downscale not in (None, 1):
            raise InputFileError(data, "a blender dataset is read at its own size (use --downscale 1)")
        return BlenderDataParserConfig(data=data)
    if kind == "nerfstudio":
        try:
            frames = json.loads((data / "transforms.json").read_text())["frames"]
            sources = [data / frame["file_path"] for frame in frames]
        except (ValueError, KeyError, TypeError) as err:
            raise InputFileError(data / "transforms.json", f"not a nerfstudio transforms file ({err})") from None
        factor = _downscaled_images(data, sources, downscale, lambda path, f: data / f"images_{f}" / path.name)
        return NerfstudioDataParserConfig(data=data, load_3D_points=False, downscale_factor=factor)
    model = colmap_model_dir(data)
    sources = [data / "images" / name for name in _colmap_image_names(data / model)]
    factor = _downscaled_images(data, sources, downscale,
                                lambda path, f: data / f"images_{f}" / path.relative_to(data / "images"))
    return ColmapDataParserConfig(data=data, colmap_path=model, images_path=Path("images"), downscale_factor=factor,
                                  load_3D_points=False)


def _colmap_image_names(model: Path) -> List[str]:
    from nerfstudio.data.utils import colmap_parsing_utils as colmap

    try:
        if (model / "images.bin").is_file():
            images = colmap.read_images_binary(str(model / "images.bin"))
        else:
            images = colmap.read_images_text(str(model / "images.txt"))
    except (OSError, ValueError, struct.error, IndexError) as err:
        raise InputFileError(model, f"unreadable COLMAP images file ({err})") from None
    if not images:
        raise InputFileError(model, "the COLMAP model has no registered images")
    return sorted(image.name for image in images.values())


def _downscaled_images(data: Path, sources: List[Path], downscale: Optional[int],
                       target_of: Callable[[Path, int], Path]) -> int:
    """The downscale factor for `sources` (see `dataparser_for`), after writing the images
    the factor needs that are missing (at floor(size / factor), nerfstudio's default rounding)."""
    from PIL import Image

    from neuralgs_ns.progress import progress_bar

    missing = [path for path in sources if not path.is_file()]
    if missing:
        raise InputFileError(missing[0], f"image missing ({len(missing)} of the dataset's {len(sources)})")
    factor = downscale
    if factor is None:
        with Image.open(sources[0]) as image:
            longest = max(image.size)
        factor = 1
        while longest / factor > MAX_AUTO_RESOLUTION:
            factor *= 2
    todo = [path for path in sources if factor > 1 and not target_of(path, factor).is_file()]
    if todo:
        with progress_bar(f"downscale images by {factor} into {target_of(todo[0], factor).parent}", len(todo)) as advance:
            for path in todo:
                target = target_of(path, factor)
                target.parent.mkdir(parents=True, exist_ok=True)
                with Image.open(path) as image:
                    small = image.resize((image.width // factor, image.height // factor), Image.LANCZOS)
                    tmp = target.with_name(f".{target.name}.tmp{target.suffix}")
                    small.save(tmp)
                    tmp.replace(target)
                advance()
    return factor

"""`neuralgs bench`: NeuralGS side by side with what a user already has, on one teacher.

Every method turns the teacher into a file (or folder), reads it back into Gaussians and
renders the held-out views. Per method: size, ratio to the teacher's Inria PLY, Gaussians
drawn, encode and decode seconds, render time per view, and PSNR / SSIM (LPIPS when its
weights are cached) against the teacher's renders, and against the dataset's images when
there is one. Methods are independent: one that is unavailable here, or that fails, gets a
row saying why, and the others still run.

    ply             the teacher as an Inria 3DGS PLY (float32): the reference size
    ply-fp16        the same layout with every property stored as float16
    spz             Niantic SPZ as the reference library writes it by default
                    (`formats.spz_bytes`), read back by gsply (not our code)
    spz-gsply       SPZ v3 written and read back by gsply (independent of our writer)
    sog             PlayCanvas SOG (`formats.sog_bytes`), read back by `formats.read_sog`
    prune-40/-66    LightGaussian-style importance pruning only (no fine-tune), as PLY
    png-gsplat      gsplat 1.4.0's PngCompression (CUDA, torchpq and plas)
    prune-40-spz, prune-66-spz
                    the same pruning, then SPZ: what a careful user can assemble today
    neuralgs        NeuralGS at its default size (the size rule without --target-size)
    neuralgs@SIZE   NeuralGS with --target-size SIZE (e.g. neuralgs@500KB)
    neuralgs-curve  NeuralGS at 0.5, 0.7, 1.4 and 2 times the default run's size (after
                    `neuralgs`, or around the teacher's size / 50 without it)

Layout of the output folder:

    teacher-views/   without --data: the teacher's renders, used as the dataset
    files/           each method's file (folder for png-gsplat)
    runs/            the NeuralGS nerfstudio runs
    results.json, results.md, rd.png, strip.png
"""

from __future__ import annotations

import datetime
import io
import json
import math
import os
import platform
import shlex
import shutil
import time
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from functools import partial
from importlib.util import find_spec
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from neuralgs_ns import formats
from neuralgs_ns.compress.pipeline_run import TeacherViews
from neuralgs_ns.errors import NeuralGSError
from neuralgs_ns.gaussians import Gaussians

ERROR_GAIN = 4.0  # the strip's error map shows |error| x 4
PLOT_PSNR_CEILING = 60.0  # dB; lossless rows (100 dB: identical renders) are drawn at the top edge
LOSSLESS_PSNR = 99.0  # psnr() clamps the MSE at 1e-10, i.e. 100 dB for identical images
LPIPS_MIN_SIZE = 32  # AlexNet's pooling leaves nothing of smaller images


# --- the methods ------------------------------------------------------------------------

@dataclass(frozen=True)
class Method:
    description: str
    suffix: str
    """File name suffix in files/ ('' for a folder)."""
    encode: Callable[["_Bench", Path], Optional[float]]
    """Writes the teacher's encoding to the path. Returns its encode seconds when they are not
    the call's wall time (shared precomputation added, evaluation left out), else None."""
    decode: Callable[[Path], Gaussians]
    in_teacher_frame: bool = True
    """The decoded scene is in the teacher file's frame (moved into the dataset's to render);
    NeuralGS stores its scene already in the dataset's frame."""
    unavailable: Callable[[], Optional[str]] = lambda: None
    """Why the method cannot run here (None: it can); may warm up what it needs."""


def _encode_ply(bench: "_Bench", path: Path) -> None:
    # The teacher as the user has it: a .ply keeps its normals or their absence, so this row
    # is the file every ratio divides; a checkpoint gets the normals ns-export writes.
    normals = bench.teacher_path.suffix.lower() != ".ply" or formats.ply_has_normals(bench.teacher_path)
    formats.write_ply(bench.teacher, path, normals=normals)


def _writer(encode: Callable[[Gaussians], bytes]) -> Callable[[Gaussians, Path], None]:
    """A method's file writer from a format's encoder: atomic, like every output."""
    from neuralgs_ns.utils import atomic_write_bytes

    return lambda gaussians, path: atomic_write_bytes(path, encode(gaussians))


def _encode_with(write: Callable[[Gaussians, Path], None], bench: "_Bench", path: Path) -> None:
    write(bench.teacher, path)


def _spz_unavailable() -> Optional[str]:
    if find_spec("gsply") is None:
        return "gsply is not installed (pip install gsply): it is the independent SPZ reader"
    # gsply compiles its decoder on first use: pay that here, not in the decode time.
    import tempfile

    tiny = Gaussians(means=torch.zeros(1, 3), scales=torch.zeros(1, 3), quats=torch.tensor([[1.0, 0, 0, 0]]),
                     opacities=torch.zeros(1, 1), features_dc=torch.zeros(1, 3), features_rest=torch.zeros(1, 0, 3))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "warm.spz").write_bytes(formats.spz_bytes(tiny))
        formats.read_spz_gsply(Path(tmp) / "warm.spz")
    return None


def _encode_pruned(fraction: float, bench: "_Bench", path: Path, writer: Optional[Callable] = None) -> float:
    from neuralgs_ns.compress.importance import prune_mask

    scores, importance_seconds = bench.importance()
    start = time.perf_counter()
    (writer or formats.write_ply)(bench.teacher.subset(prune_mask(scores, fraction).cpu()), path)
    return importance_seconds + time.perf_counter() - start


def _png_unavailable() -> Optional[str]:
    missing = [name for name, ok in (("a CUDA device", torch.cuda.is_available()),
                                     ("torchpq (pip install torchpq; needs CuPy)", find_spec("torchpq") is not None),
                                     ("plas (pip install git+https://github.com/fraunhoferhhi/PLAS.git)",
                                      find_spec("plas") is not None)) if not ok]
    return f"gsplat's PngCompression needs CUDA, torchpq and plas; missing {', '.join(missing)}" if missing else None


def _encode_png(bench: "_Bench", path: Path) -> None:
    """gsplat's PngCompression into a fresh folder, renamed into place when complete. It sorts
    with PLAS on the GPU and drops the least opaque Gaussians down to a square count."""
    from gsplat.compression import PngCompression

    g = bench.teacher.to("cuda")
    splats = {"means": g.means, "scales": g.scales, "quats": g.quats, "opacities": g.opacities[:, 0],
              "sh0": g.features_dc[:, None, :]}
    if g.sh_degree > 0:  # gsplat's k-means of shN fails on an empty [N, 0, 3]
        splats["shN"] = g.features_rest
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    PngCompression(verbose=False).compress(str(tmp), splats)
    os.replace(tmp, path)


def _decode_png(path: Path) -> Gaussians:
    from gsplat.compression import PngCompression

    s = {k: v.float().cpu() for k, v in PngCompression(verbose=False).decompress(str(path)).items()}
    n = len(s["means"])
    return Gaussians(means=s["means"], scales=s["scales"], quats=s["quats"], opacities=s["opacities"].reshape(n, 1),
                     features_dc=s["sh0"].reshape(n, 3), features_rest=s.get("shN", torch.zeros(n, 0, 3)))


CURVE_FACTORS = (0.5, 0.7, 1.4, 2.0)
"""`neuralgs-curve`: NeuralGS at these multiples of the default run's file size."""
CURVE = "neuralgs-curve"


def sized_method_name(size: int) -> str:
    """'neuralgs@<size>' for a target size in bytes, written as the user would (decimal units)."""
    for unit, scale in (("MB", 10**6), ("KB", 10**3)):
        if size >= scale and size % (scale // 1000 or 1) == 0:
            text = f"{size / scale:.6g}"
            if round(float(text) * scale) == size:  # exact: the name is the size
                return f"neuralgs@{text}{unit}"
    return f"neuralgs@{size}"


def _encode_neuralgs(target_size: Optional[int], bench: "_Bench", path: Path) -> float:
    from neuralgs_ns.compress.run import compress, teacher_name

    start = time.perf_counter()
    report = compress(bench.teacher_path, path, data=bench.targets, preset=bench.preset, device=bench.device,
                      fine_tune_iterations=bench.fine_tune_iterations, fit_iterations=bench.fit_iterations,
                      run_dir=bench.output_dir / "runs", target_size=target_size,
                      experiment_name=f"{teacher_name(bench.teacher_path)}-{path.stem}")
    # compress() ends by evaluating its held-out views: not encoding, left out.
    return time.perf_counter() - start - report.stage_seconds.get("Evaluate held-out views", 0.0)


def curve_methods(rows: Sequence["BenchRow"], teacher_bytes: int) -> List[str]:
    """The `neuralgs-curve` points: CURVE_FACTORS times the default run's size (its row in
    `rows`), or times the teacher's bytes / 50 when there is no such row."""
    default = next((r for r in rows if r.method == "neuralgs" and r.status == "ok"), None)
    centre = default.bytes if default is not None else teacher_bytes / 50
    return [sized_method_name(_three_digits(centre * factor)) for factor in CURVE_FACTORS]


def _three_digits(size: float) -> int:
    """`size` rounded to 3 significant digits (so its method name reads 352KB, not 352713B)."""
    return int(round(size, 2 - int(math.floor(math.log10(max(size, 1))))))


def neuralgs_method(name: str) -> Optional[Method]:
    """The Method of 'neuralgs@SIZE' (SIZE as `rate.parse_size` reads it), else None."""
    from neuralgs_ns.compress.rate import parse_size

    if not name.startswith("neuralgs@"):
        return None
    size = parse_size(name[len("neuralgs@"):])
    return Method(f"NeuralGS with --target-size {size:,} B", ".ngs", partial(_encode_neuralgs, size), _decode_ngs,
                  in_teacher_frame=False)


def _decode_ngs(path: Path) -> Gaussians:
    from neuralgs_ns.codec import CompressedScene

    return CompressedScene.load(path).decode()


METHODS: Dict[str, Method] = {
    "ply": Method("Inria 3DGS PLY, float32 (the teacher as is)", ".ply", _encode_ply, formats.read_ply),
    "ply-fp16": Method("Inria PLY layout, every property float16 ('property half')", ".ply",
                       partial(_encode_with, _writer(formats.ply_fp16_bytes)), formats.read_ply),
    "spz": Method(f"Niantic SPZ v{formats.SPZ_DEFAULT_VERSION}, the reference library's default (formats.spz_bytes), "
                  "read back by gsply", ".spz", partial(_encode_with, _writer(formats.spz_bytes)),
                  formats.read_spz_gsply, unavailable=_spz_unavailable),
    "spz-gsply": Method("SPZ v3 written and read back by gsply (8-bit SH)", ".spz",
                        partial(_encode_with, formats.write_spz_gsply), formats.read_spz_gsply,
                        unavailable=_spz_unavailable),
    "sog": Method("PlayCanvas SOG v2 (formats.sog_bytes: codebooks, SH palette, WebP), read back by formats.read_sog",
                  ".sog", partial(_encode_with, _writer(formats.sog_bytes)), formats.read_sog),
    **{f"prune-{percent}": Method(f"importance pruning of {percent}%, no fine-tune, PLY", ".ply",
                                  partial(_encode_pruned, percent / 100), formats.read_ply) for percent in (40, 66)},
    **{f"prune-{percent}-spz": Method(f"importance pruning of {percent}%, then SPZ v{formats.SPZ_DEFAULT_VERSION} "
                                      "(read back by gsply)", ".spz",
                                      partial(_encode_pruned, percent / 100, writer=_writer(formats.spz_bytes)),
                                      formats.read_spz_gsply, unavailable=_spz_unavailable) for percent in (40, 66)},
    "png-gsplat": Method("gsplat 1.4.0 PngCompression (PLAS sort, PNGs, k-means SH)", "", _encode_png, _decode_png,
                         unavailable=_png_unavailable),
    "neuralgs": Method("NeuralGS at its default size (no --target-size)", ".ngs", partial(_encode_neuralgs, None),
                       _decode_ngs, in_teacher_frame=False),
}
DEFAULT_METHODS: Tuple[str, ...] = (*METHODS, CURVE)


# --- results ------------------------------------------------------------------------------

@dataclass
class BenchRow:
    method: str
    description: str
    status: str = "ok"
    """'ok', 'unavailable' or 'error'."""
    reason: str = ""
    """Why it is unavailable, or the error."""
    path: Optional[str] = None
    bytes: Optional[int] = None
    ratio: Optional[float] = None
    """Teacher bytes (the file as given) over this method's bytes."""
    gaussians: Optional[int] = None
    encode_seconds: Optional[float] = None
    decode_seconds: Optional[float] = None
    """File -> Gaussians, on the CPU."""
    render_ms: Optional[float] = None
    """Mean over the held-out views, on the bench's device."""
    psnr_gt: Optional[float] = None
    ssim_gt: Optional[float] = None
    lpips_gt: Optional[float] = None
    psnr_teacher: Optional[float] = None
    ssim_teacher: Optional[float] = None
    lpips_teacher: Optional[float] = None

    @property
    def psnr(self) -> Optional[float]:
        """The headline PSNR: against ground truth when there is some, else the teacher."""
        return self.psnr_gt if self.psnr_gt is not None else self.psnr_teacher


@dataclass
class BenchResult:
    teacher: Path
    teacher_gaussians: int
    teacher_bytes: int
    """What every ratio divides: the teacher file as given (`formats.teacher_bytes`)."""
    targets: Path
    """The dataset the views come from: --data, or the teacher's renders."""
    has_ground_truth: bool
    eval_views: int
    image_size: Tuple[int, int]
    """Width and height of the pictured held-out view."""
    device: str
    command: str
    machine: dict
    rows: List[BenchRow]
    notes: List[str]
    strip_view: int
    strip: Dict[str, Tensor] = field(default_factory=dict, repr=False)
    """Images [H, W, 3] of the pictured view: 'ground truth' (with --data), 'teacher', then
    each method that ran; not saved in results.json."""

    @property
    def teacher_label(self) -> str:
        """The .ply's stem, or the nerfstudio experiment's name (not a run folder's timestamp)."""
        from neuralgs_ns.compress.run import teacher_name

        return teacher_name(self.teacher)

    def row(self, method: str) -> BenchRow:
        return next(r for r in self.rows if r.method == method)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "strip"}  # asdict would copy the images
        d.update(teacher=str(self.teacher), targets=str(self.targets), rows=[asdict(r) for r in self.rows])
        return _json_safe(d)

    def table(self) -> List[List[str]]:
        """Header and one row of cells per method (shared by results.md and the console)."""
        refs = (["gt"] if self.has_ground_truth else []) + ["teacher"]
        metrics = [m for m in ("psnr", "ssim", "lpips") if m != "lpips" or any(
            getattr(r, f"lpips_{ref}") is not None for r in self.rows for ref in refs)]
        header = ["method", "size", "ratio", "Gaussians", "encode", "decode", "render/view"]
        header += [f"{m.upper()} {'GT' if ref == 'gt' else 'teacher'}" for ref in refs for m in metrics]
        cells = [header]
        for r in self.rows:
            if r.status != "ok":
                cells.append([r.method, r.status] + [""] * (len(header) - 2))
                continue
            line = [r.method, _format_bytes(r.bytes), f"{r.ratio:.1f}x", f"{r.gaussians:,}",
                    f"{r.encode_seconds:.2f} s", f"{r.decode_seconds:.2f} s", f"{r.render_ms:.1f} ms"]
            for ref in refs:
                line += [_metric_cell(m, getattr(r, f"{m}_{ref}")) for m in metrics]
            cells.append(line)
        return cells

    def markdown(self) -> str:
        cells = self.table()
        right = "|".join(["---"] + ["---:"] * (len(cells[0]) - 1))
        lines = [f"### NeuralGS bench: {self.teacher_label}", "", f"`{self.command}`", "",
                 f"{self.machine['date']}, {self.machine['cpu_count']} CPUs, torch {self.machine['torch']}, "
                 f"device {self.machine['device_name']}", "",
                 "| " + " | ".join(cells[0]) + " |", "|" + right + "|"]
        lines += ["| " + " | ".join(line) + " |" for line in cells[1:]]
        lines += ["", *[f"- {note}" for note in self.notes]]
        lines += [f"- {r.method}: {r.status}: {r.reason}" for r in self.rows if r.status != "ok"]
        return "\n".join(lines) + "\n"

    def print(self) -> None:
        from neuralgs_ns.compress.run import format_rows

        print()
        print(format_rows(self.table()))
        for r in self.rows:
            if r.status != "ok":
                print(f"{r.method}: {r.status}: {r.reason}")


def _metric_cell(metric: str, value: Optional[float]) -> str:
    if value is None:
        return ""
    if metric == "psnr":
        return "lossless" if value >= LOSSLESS_PSNR else f"{value:.2f}"
    return f"{value:.4f}"


def _format_bytes(n: int) -> str:
    from neuralgs_ns.compress.run import format_bytes

    return format_bytes(n) if n >= 1024 else f"{n} B"


def _json_safe(value):
    """NaN and infinities as null (JSON has no such numbers)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --- the run ------------------------------------------------------------------------------

View = Tuple[Tensor, Tensor, int, int]  # viewmat [4, 4], K [3, 3], width, height


@dataclass
class _Bench:
    """What the methods share during one run."""

    teacher_path: Path
    teacher: Gaussians
    """As stored in the teacher's file, on the CPU."""
    output_dir: Path
    targets: Path
    device: str
    preset: str
    fine_tune_iterations: Optional[int]
    fit_iterations: Optional[int]
    to_dataset_frame: Callable[[Gaussians], Gaussians]
    views: List[View]
    """The held-out cameras, on the device."""
    references: Dict[str, List[Tensor]] = field(default_factory=dict)
    """'gt' (with --data) and 'teacher': an image [H, W, 3] per held-out view, on the CPU."""
    lpips: Optional[torch.nn.Module] = None
    _importance: Optional[Tuple[Tensor, float]] = None

    def importance(self) -> Tuple[Tensor, float]:
        """Importance scores of the teacher over the training views (NeuralGS's stage A), and
        the seconds they took; computed once, shared by the pruning rows."""
        if self._importance is None:
            from neuralgs_ns.compress.importance import importance_scores
            from neuralgs_ns.models.neuralgs import NeuralGSModelConfig
            from neuralgs_ns.progress import progress_bar

            start = time.perf_counter()
            views = _train_cameras(self.targets, self.device)
            teacher = self.to_dataset_frame(self.teacher).to(self.device)
            with progress_bar("importance over training views", len(views)) as advance:
                scores = importance_scores(teacher, views, beta=NeuralGSModelConfig.importance_beta, progress=advance)
            self._importance = (scores, time.perf_counter() - start)
        return self._importance

    def renders(self, gaussians: Gaussians):
        """Yields (image [H, W, 3] in [0, 1] on the device, render seconds) per held-out view,
        on white as the datasets' RGBA images are composited."""
        white = torch.ones(1, 3, device=self.device)
        for viewmat, K, w, h in self.views:
            _sync(self.device)
            start = time.perf_counter()
            with torch.no_grad():
                rgb = gaussians.render(viewmat[None], K[None], w, h, backgrounds=white)[0][0]
            _sync(self.device)
            yield rgb.clamp(0, 1), time.perf_counter() - start

    def evaluate(self, gaussians: Gaussians, strip_view: int, advance) -> Tuple[dict, Tensor]:
        """Mean render ms and metrics against each reference over the held-out views, and the
        render of `strip_view`."""
        from neuralgs_ns.compress.losses import ssim
        from neuralgs_ns.compress.pipeline_run import psnr

        sums: Dict[str, float] = {}
        strip = None
        for i, (image, seconds) in enumerate(self.renders(gaussians)):
            values = {"render_ms": 1000 * seconds}
            cpu = image.cpu()
            for ref, images in self.references.items():
                values[f"psnr_{ref}"] = psnr(cpu, images[i])
                values[f"ssim_{ref}"] = float(ssim(cpu, images[i]))
                if self.lpips is not None:
                    chw = [x.permute(2, 0, 1)[None].to(self.device) for x in (image, images[i])]
                    values[f"lpips_{ref}"] = float(self.lpips(*chw))
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            strip = cpu if i == strip_view else strip
            advance()
        return {k: v / len(self.views) for k, v in sums.items()}, strip


def _identity(g: Gaussians) -> Gaussians:
    return g


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _train_cameras(data: Path, device: str) -> List[View]:
    """The training split's cameras, without loading its images (`dataset_views` would load
    them all, gigabytes for a real capture)."""
    from neuralgs_ns.compress.pipeline_run import dataparser_for
    from neuralgs_ns.models.portable_splatfacto import get_viewmat

    cameras = dataparser_for(data).setup().get_dataparser_outputs("train").cameras
    return [(get_viewmat(cameras.camera_to_worlds[i : i + 1])[0].to(device),
             cameras[i : i + 1].get_intrinsics_matrices()[0].to(device),
             int(cameras.width[i].item()), int(cameras.height[i].item())) for i in range(len(cameras))]


def _dataset_frame(teacher_path: Path, teacher: Gaussians, data: Path, views: List[View], images: List[Tensor]
                   ) -> Tuple[Callable[[Gaussians], Gaussians], str]:
    """How to move the stored teacher into the dataset's frame, checked as NeuralGS checks it
    (`check_teacher_frame`) on the held-out views. Raises NeuralGSError when no frame beats an
    empty render by NeuralGS's margin (the wrong dataset, say): before any long work."""
    from neuralgs_ns.compress.pipeline_run import check_teacher_frame, dataparser_for, frame_check_indices
    from neuralgs_ns.models.neuralgs import NeuralGSModelConfig

    outputs = dataparser_for(data).setup().get_dataparser_outputs("train")
    idx = frame_check_indices(len(views), NeuralGSModelConfig.frame_check_views)
    frame = check_teacher_frame(teacher, teacher_path.suffix.lower() == ".ply", outputs.dataparser_transform,
                                float(outputs.dataparser_scale), [views[i] for i in idx], [images[i] for i in idx],
                                NeuralGSModelConfig.frame_check_margin_db)
    if not frame.fits:
        raise NeuralGSError(f"{teacher_path}: teacher does not match {data} (PSNR on {len(idx)} held-out views: "
                            f"{frame.summary})")
    return frame.move or _identity, f"teacher frame: {frame.choice} ({frame.summary})"


def _machine(device: str) -> dict:
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "device": device, "platform": platform.platform(),
            "python": platform.python_version(),
            "device_name": (torch.cuda.get_device_name() if device.startswith("cuda")
                            else f"cpu ({platform.processor() or platform.machine()})"),
            "torch_threads": torch.get_num_threads()}


def _path_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _check_options(teacher: Path, output_dir: Path, data: Optional[Path], methods: Sequence[str],
                   fine_tune_iterations: Optional[int], fit_iterations: Optional[int], views: TeacherViews) -> None:
    """One-line NeuralGSErrors for what can be checked before any long work."""
    known = f"known: {', '.join(METHODS)}, {CURVE}, neuralgs@SIZE"
    unknown = []
    for m in methods:
        try:
            if m not in METHODS and m != CURVE and neuralgs_method(m) is None:
                unknown.append(m)
        except ValueError as err:  # neuralgs@SIZE with a SIZE that does not parse
            raise NeuralGSError(f"method {m!r}: {err}") from None
    if unknown:
        raise NeuralGSError(f"unknown method{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} ({known})")
    if not methods:
        raise NeuralGSError(f"--methods is empty ({known})")
    if not output_dir.parent.is_dir():
        raise NeuralGSError(f"{output_dir}: its parent folder {output_dir.parent} does not exist")
    if output_dir.exists() and not output_dir.is_dir():
        raise NeuralGSError(f"{output_dir}: exists and is not a folder")
    if any(n is not None and n < 1 for n in (fine_tune_iterations, fit_iterations)):
        raise NeuralGSError("--neuralgs-fine-tune-iterations and --neuralgs-fit-iterations must be >= 1")
    if data is None and (views.n_train < 1 or views.n_val < 1 or views.resolution < 16):
        raise NeuralGSError("need --views.n-train >= 1, --views.n-val >= 1 and --views.resolution >= 16")
    if data is not None and not data.is_dir():
        raise NeuralGSError(f"{data}: no such dataset folder")


def run_bench(teacher: Path, output_dir: Path, data: Optional[Path] = None,
              methods: Sequence[str] = DEFAULT_METHODS, preset: str = "auto", device: str = "auto",
              fine_tune_iterations: Optional[int] = None, fit_iterations: Optional[int] = None,
              views: Optional[TeacherViews] = None, command: str = "") -> BenchResult:
    """Runs each of `methods` on `teacher` (see the module docstring) and returns the rows;
    `write_outputs` saves them. Raises NeuralGSError (one line) for bad options, a missing or
    unreadable teacher or dataset, before any long work; a method's own failure becomes its
    row's error instead."""
    from nerfstudio.utils.rich_utils import CONSOLE

    from neuralgs_ns.compress.pipeline_run import dataparser_for, dataset_views, render_teacher_dataset
    from neuralgs_ns.compress.run import resolve_device
    from neuralgs_ns.models.portable_splatfacto import load_lpips
    from neuralgs_ns.progress import progress_bar

    teacher, output_dir = Path(teacher), Path(output_dir)
    data = None if data is None else Path(data)
    views = views if views is not None else TeacherViews()
    methods = list(dict.fromkeys(methods))  # in the order given, once each
    _check_options(teacher, output_dir, data, methods, fine_tune_iterations, fit_iterations, views)
    teacher_gaussians = formats.load_teacher(teacher)
    if data is not None:
        dataparser_for(data)  # not a dataset: one line now, not after the teacher renders
    device = resolve_device(device)
    output_dir.mkdir(exist_ok=True)
    (output_dir / "files").mkdir(exist_ok=True)
    notes: List[str] = []

    if data is None:
        targets = render_teacher_dataset(teacher_gaussians, output_dir / "teacher-views", views, device)
        notes.append(f"no --data: the dataset is the teacher's renders ({targets}, {views.n_train} training + "
                     f"{views.n_val} held-out views at {views.resolution}x{views.resolution}), so quality is "
                     "measured against the teacher only")
    else:
        targets = data
    held_out = dataset_views(targets, "val")
    if not held_out:
        raise NeuralGSError(f"{targets}: no held-out (val) views")
    cameras = [(viewmat.to(device), K.to(device), w, h) for viewmat, K, w, h, _ in held_out]
    images = [image for *_, image in held_out]
    if data is None:
        to_dataset_frame = _identity
    else:
        to_dataset_frame, frame_note = _dataset_frame(teacher, teacher_gaussians, data, cameras, images)
        notes.append(frame_note)
    del held_out

    bench = _Bench(teacher_path=teacher, teacher=teacher_gaussians, output_dir=output_dir, targets=targets,
                   device=device, preset=preset, fine_tune_iterations=fine_tune_iterations,
                   fit_iterations=fit_iterations, to_dataset_frame=to_dataset_frame, views=cameras)
    if min(min(w, h) for *_, w, h in cameras) < LPIPS_MIN_SIZE:
        notes.append(f"LPIPS not reported: held-out views smaller than AlexNet's {LPIPS_MIN_SIZE} pixels")
    elif (lpips := load_lpips()) is None:
        notes.append("LPIPS unavailable (AlexNet weights not cached and not downloadable): not reported")
    else:
        bench.lpips = lpips.to(device)
    strip_view = len(cameras) // 2
    strip: Dict[str, Tensor] = {}
    if data is not None:
        bench.references["gt"] = images
        strip["ground truth"] = images[strip_view]
    # The teacher's renders: every method's second reference. The first render also pays the
    # rasteriser's one-time compilation, so no method's render time does.
    teacher_renders = []
    with progress_bar("teacher at the held-out views", len(cameras)) as advance:
        for image, _ in bench.renders(to_dataset_frame(teacher_gaussians).to(device)):
            teacher_renders.append(image.cpu())
            advance()
    bench.references["teacher"] = teacher_renders
    strip["teacher"] = teacher_renders[strip_view]

    reference_bytes = formats.teacher_bytes(teacher, teacher_gaussians)
    rows: List[BenchRow] = []
    queue = list(methods)
    while queue:
        name = queue.pop(0)
        if name == CURVE:
            queue[:0] = [m for m in curve_methods(rows, reference_bytes) if m not in methods]
            continue
        CONSOLE.rule(f"[bold]{name}")
        row, image = _run_method(name, bench, reference_bytes, strip_view)
        rows.append(row)
        if image is not None and not name.startswith("neuralgs@"):  # the strip shows the default point
            strip[name] = image
        if row.status != "ok":
            CONSOLE.print(f"[bold yellow]{name}: {row.status}: {row.reason}")
    notes.append(f"{len(cameras)} held-out views; render/view is the mean on {device}; decode is file -> Gaussians "
                 "on the CPU; pruning's encode includes the importance pass over the training views; NeuralGS's "
                 "encode is its whole compress() run except its held-out evaluation")
    if any(r.status == "ok" and r.psnr_teacher is not None and r.psnr_teacher >= LOSSLESS_PSNR for r in rows):
        notes.append("'lossless': renders identical to the teacher's (PSNR is infinite; psnr() reports 100 dB)")
    return BenchResult(teacher=teacher, teacher_gaussians=len(teacher_gaussians), teacher_bytes=reference_bytes,
                       targets=targets, has_ground_truth=data is not None, eval_views=len(cameras),
                       image_size=(cameras[0][2], cameras[0][3]), device=device, command=command,
                       machine=_machine(device), rows=rows, notes=notes, strip_view=strip_view, strip=strip)


def _run_method(name: str, bench: _Bench, reference_bytes: int, strip_view: int) -> Tuple[BenchRow, Optional[Tensor]]:
    """One method's row (and its render of the pictured view); its failure is the row's error."""
    from neuralgs_ns.progress import progress_bar

    method = METHODS.get(name) or neuralgs_method(name)
    row = BenchRow(method=name, description=method.description)
    try:
        reason = method.unavailable()
        if reason:
            row.status, row.reason = "unavailable", reason
            return row, None
        path = bench.output_dir / "files" / f"{name}{method.suffix}"
        _remove(path)  # a stale file from an earlier run is never measured
        start = time.perf_counter()
        seconds = method.encode(bench, path)
        row.encode_seconds = time.perf_counter() - start if seconds is None else seconds
        row.path, row.bytes = str(path), _path_bytes(path)
        row.ratio = reference_bytes / row.bytes
        with progress_bar(f"{name}: decode, render", 1 + len(bench.views)) as advance:
            start = time.perf_counter()
            gaussians = method.decode(path)
            row.decode_seconds = time.perf_counter() - start
            advance()
            if method.in_teacher_frame:
                gaussians = bench.to_dataset_frame(gaussians)
            row.gaussians = len(gaussians)
            metrics, image = bench.evaluate(gaussians.to(bench.device), strip_view, advance)
        for key, value in metrics.items():
            setattr(row, key, value)
        return row, image
    except Exception as err:  # one method's failure must not cost the others' results
        first_line = (str(err).strip().splitlines() or [""])[0]
        row.status, row.reason = "error", f"{type(err).__name__}: {first_line}"
        return row, None


# --- outputs ------------------------------------------------------------------------------

def write_outputs(result: BenchResult, output_dir: Path) -> Dict[str, Path]:
    """results.json, results.md, rd.png and strip.png in `output_dir`, each written atomically."""
    from neuralgs_ns.utils import atomic_write_bytes

    output_dir = Path(output_dir)
    paths = {name: output_dir / name for name in ("results.json", "results.md", "rd.png", "strip.png")}
    atomic_write_bytes(paths["results.json"], (json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n").encode())
    atomic_write_bytes(paths["results.md"], result.markdown().encode())
    atomic_write_bytes(paths["rd.png"], rd_plot_png(result))
    atomic_write_bytes(paths["strip.png"], strip_png(result))
    return paths


# Rate-distortion curves of the plot: method name patterns joined by a line, in size order.
PLOT_CURVES = (("NeuralGS (--target-size)", "tab:red", lambda m: m == "neuralgs" or m.startswith("neuralgs@")),
               ("importance pruning + SPZ", "tab:green", lambda m: m in ("spz", "prune-40-spz", "prune-66-spz")),
               ("importance pruning (PLY)", "tab:gray", lambda m: m in ("ply", "prune-40", "prune-66")))


def rd_plot_png(result: BenchResult) -> bytes:
    """Size (log x) against PSNR: the rate-distortion curves of PLOT_CURVES (NeuralGS's target
    sizes, pruning with and without SPZ) as lines, every method that ran as a labelled marker
    (NeuralGS's default as a star); lossless rows sit at the top edge as upward triangles."""
    from matplotlib.figure import Figure

    rows = [r for r in result.rows if r.status == "ok" and r.psnr is not None]
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()

    def y_of(r: BenchRow) -> float:
        return min(r.psnr, PLOT_PSNR_CEILING)

    for label, color, member in PLOT_CURVES:
        curve = sorted((r for r in rows if member(r.method)), key=lambda r: r.bytes)
        if len(curve) >= 2:
            ax.plot([r.bytes for r in curve], [y_of(r) for r in curve], color=color, alpha=0.6, zorder=2, label=label)
    for r in rows:
        capped = r.psnr > PLOT_PSNR_CEILING
        is_neuralgs = r.method.startswith("neuralgs")
        marker = "^" if capped else ("*" if r.method == "neuralgs" else "o")
        ax.scatter([r.bytes], [y_of(r)], marker=marker, s=140 if r.method == "neuralgs" else 40,
                   color="tab:red" if is_neuralgs else "tab:blue", zorder=3)
        suffix = " (lossless)" if r.psnr >= LOSSLESS_PSNR else f" (>{PLOT_PSNR_CEILING:g})" if capped else ""
        name = r.method[len("neuralgs"):] if r.method.startswith("neuralgs@") else r.method
        ax.annotate(name + suffix, (r.bytes, y_of(r)), textcoords="offset points", xytext=(6, 4), fontsize=7)
    ax.set_xscale("log")
    ax.margins(x=0.2)  # room for the labels of the outermost markers
    ax.set_xlabel("file size (bytes)")
    ax.set_ylabel(f"held-out PSNR vs {'ground truth' if result.has_ground_truth else 'teacher renders'} (dB)")
    ax.set_title(f"{result.teacher_label}: {result.teacher_gaussians:,} Gaussians, {result.eval_views} held-out views",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if any(len([r for r in rows if member(r.method)]) >= 2 for _, _, member in PLOT_CURVES):
        ax.legend(fontsize=8, loc="lower right")
    if rows:
        lo = min(min(r.psnr for r in rows), PLOT_PSNR_CEILING) - 2
        ax.set_ylim(lo, PLOT_PSNR_CEILING + 2 if any(r.psnr > PLOT_PSNR_CEILING for r in rows) else None)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def strip_png(result: BenchResult) -> bytes:
    """The pictured held-out view side by side: ground truth (with --data), teacher, each
    method, and |error| x ERROR_GAIN of the best NeuralGS row against ground truth (else the
    teacher); each panel labelled on top."""
    import matplotlib
    from PIL import Image, ImageDraw

    from neuralgs_ns.compress.pipeline_run import psnr
    from neuralgs_ns.utils import png_bytes

    reference_name = "ground truth" if result.has_ground_truth else "teacher"
    reference = result.strip[reference_name]
    panels, labels = [], []
    for name, image in result.strip.items():
        panels.append(image.numpy())
        row = next((r for r in result.rows if r.method == name), None)
        label = name if row is None else f"{name} {_format_bytes(row.bytes)}"
        value = psnr(image, reference)
        labels.append((label, "" if name == reference_name else
                       "lossless" if value >= LOSSLESS_PSNR else f"{value:.1f} dB"))
    neuralgs_rows = [r for r in result.rows if r.method.startswith("neuralgs") and r.method in result.strip]
    if neuralgs_rows:
        best = max(neuralgs_rows, key=lambda r: r.psnr)
        error = ((result.strip[best.method] - reference).abs().mean(-1) * ERROR_GAIN).clamp(0, 1).numpy()
        panels.append(matplotlib.colormaps["inferno"](error)[..., :3].astype(np.float32))
        labels.append((f"|{best.method} - {'GT' if result.has_ground_truth else 'teacher'}|", f"x{ERROR_GAIN:g}"))
    h, w = panels[0].shape[:2]
    zoom = max(1, math.ceil(160 / w))
    gap, bar = 4, 28
    sheet = Image.new("RGB", (len(panels) * (w * zoom + gap) - gap, h * zoom + bar), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (panel, (line1, line2)) in enumerate(zip(panels, labels)):
        image = Image.fromarray((np.clip(panel, 0, 1) * 255).round().astype(np.uint8)).resize((w * zoom, h * zoom),
                                                                                              Image.NEAREST)
        x = i * (w * zoom + gap)
        sheet.paste(image, (x, bar))
        draw.text((x + 2, 2), line1, fill="black")
        draw.text((x + 2, 14), line2, fill="black")
    return png_bytes(np.asarray(sheet))


def command_line(options) -> str:
    """The `neuralgs bench` command equivalent to the CLI's dataclass `options`: the teacher,
    then every option that differs from its default (nested dataclasses as --a.b)."""

    def default_of(f):
        if f.default is not MISSING:
            return f.default
        return f.default_factory() if f.default_factory is not MISSING else MISSING

    def flags(obj, prefix: str) -> List[str]:
        args = []
        for f in fields(obj):
            value, default = getattr(obj, f.name), default_of(f)
            flag = prefix + f.name.replace("_", "-")
            if f.name == "teacher" or value == default:
                continue
            if is_dataclass(value):
                args += flags(value, flag + ".")
            elif isinstance(value, (tuple, list)):
                args += [flag, *map(str, value)]
            else:
                args += [flag, str(value)]
        return args

    return shlex.join(["neuralgs", "bench", str(options.teacher), *flags(options, "--")])

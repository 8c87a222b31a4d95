"""One NeuralGS compression run, from a teacher to a compressed file and a report.

`compress()` is what `neuralgs compress` runs, and what the demo and the benchmarks call:
stages A-C run inside nerfstudio's trainer setup (`NeuralGSPipeline`), stage D is the
training loop, then the held-out views are evaluated. It returns a `CompressReport`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from neuralgs_ns.compress.pipeline_run import TeacherViews
from neuralgs_ns.errors import NeuralGSError


@dataclass
class CompressReport:
    """What one compression run produced and measured."""

    teacher: Path
    """The teacher as given (.ply, .ckpt, run directory or config.yml)."""
    output: Path
    """The compressed file written."""
    teacher_gaussians: int
    teacher_bytes: int
    """What the ratio compares against: the teacher file's bytes on disk, or for a checkpoint
    its Inria 3DGS PLY (`gaussians.teacher_bytes`)."""
    compressed_gaussians: int
    compressed_bytes: int
    psnr: float
    """Mean held-out PSNR (dB) of the compressed scene."""
    ssim: float
    lpips: Optional[float]
    """None when LPIPS is unavailable (no cached AlexNet weights, offline)."""
    measured_against: str
    """'dataset images' (with --data) or 'teacher renders'."""
    eval_views: int
    """Number of held-out views the metrics average over."""
    stage_seconds: Dict[str, float]
    """Wall time of each stage, in the order they ran (setup and saving not included)."""
    total_seconds: float
    """Wall time of the whole call."""
    config_path: Path
    """The nerfstudio run's config.yml (for ns-viewer, ns-eval, ns-export)."""
    fit_iterations: int
    """Stage C steps run (the preset's, scaled for the scene's size, unless set)."""
    fine_tune_iterations: int
    """Stage D steps run (the preset's, scaled for the scene's size, unless set)."""
    metrics: Dict[str, float] = field(default_factory=dict)
    """Every averaged metric nerfstudio reported on the held-out views."""

    @property
    def ratio(self) -> float:
        """Teacher bytes over compressed bytes."""
        return self.teacher_bytes / self.compressed_bytes

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(teacher=str(self.teacher), output=str(self.output), config_path=str(self.config_path),
                 ratio=self.ratio)
        return d

    def format_table(self) -> str:
        rows: List[Sequence[str]] = [
            ("", "Gaussians", "size", ""),
            ("teacher", f"{self.teacher_gaussians:,}", format_bytes(self.teacher_bytes), str(self.teacher)),
            ("compressed", f"{self.compressed_gaussians:,}", format_bytes(self.compressed_bytes), str(self.output)),
            ("", "", "", f"{self.fit_iterations} fit + {self.fine_tune_iterations} fine-tune steps"),
            ("ratio", "", f"{self.ratio:.1f}x", ""),
        ]
        quality = f"SSIM {self.ssim:.4f}" + ("" if self.lpips is None else f", LPIPS {self.lpips:.4f}")
        lines = [format_rows(rows), "",
                 f"held-out PSNR {self.psnr:.2f} dB, {quality} "
                 f"(vs {self.measured_against}, {self.eval_views} views)", "",
                 format_stage_times(self.stage_seconds, self.total_seconds), "",
                 f"look at it: neuralgs view {self.output}",
                 f"run: {self.config_path.parent} (ns-viewer, ns-eval, ns-export: --load-config {self.config_path})"]
        return "\n".join(lines)

    def print(self) -> None:
        print()
        print(self.format_table())


def format_bytes(n: int) -> str:
    if n >= 2**20:
        return f"{n / 2**20:.2f} MiB"
    return f"{n / 2**10:.1f} KiB"


def format_seconds(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds:.0f} s ({seconds / 60:.1f} min)"


def format_rows(rows: Sequence[Sequence[str]], right_align_from: int = 1) -> str:
    """Rows of cells as aligned columns: the first left-aligned, the next ones (up to the
    last, which is free text) right-aligned."""
    n = max(len(r) for r in rows)
    rows = [list(r) + [""] * (n - len(r)) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(n)]
    lines = []
    for r in rows:
        cells = []
        for i, cell in enumerate(r):
            if i == n - 1:
                cells.append(cell)
            elif i >= right_align_from:
                cells.append(cell.rjust(widths[i]))
            else:
                cells.append(cell.ljust(widths[i]))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_stage_times(stage_seconds: Dict[str, float], total_seconds: Optional[float] = None) -> str:
    """'wall time' block: one line per stage, in run order, then other (what the stages do
    not cover: setup, saving) and total."""

    def row(name: str, seconds: float) -> tuple:
        short = f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
        return (f"  {name}", short, f"({seconds / 60:.1f} min)" if seconds >= 60 else "")

    rows = [("wall time", "", "")] + [row(name, sec) for name, sec in stage_seconds.items()]
    if total_seconds is not None:
        other = total_seconds - sum(stage_seconds.values())
        if other >= 0.05:
            rows.append(row("other (setup, saving)", other))
        rows.append(row("total", total_seconds))
    return format_rows(rows)


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when present, else 'cpu'; refuses 'cuda' without a CUDA device."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise NeuralGSError("--device cuda: no CUDA device is available")
    return device


def teacher_name(path: Path) -> str:
    """A run name for the teacher: the .ply's stem, or the experiment name of its nerfstudio
    run (outputs/<experiment>/<method>/<timestamp>/nerfstudio_models/step-N.ckpt)."""
    from neuralgs_ns.formats import find_checkpoint

    path = Path(path)
    if path.suffix.lower() == ".ply":
        return path.stem
    run_dir = find_checkpoint(path).parent.parent
    return run_dir.parent.parent.name or run_dir.name


def compress(teacher: Path, output: Path, data: Optional[Path] = None, preset: str = "auto", device: str = "auto",
             fine_tune_iterations: Optional[int] = None, fit_iterations: Optional[int] = None,
             run_dir: Path = Path("neuralgs-runs"), views: Optional[TeacherViews] = None,
             experiment_name: Optional[str] = None, model_options: Optional[Dict[str, Any]] = None,
             inspect: Optional[Callable[[str, Any], None]] = None,
             target_size: Optional[Union[int, str]] = None, downscale: Optional[int] = None,
             verbose: bool = False, num_devices: int = 1,
             after_training: Optional[Callable[[int, Any], None]] = None) -> CompressReport:
    """Compresses `teacher` into `output` with NeuralGS through nerfstudio's trainer.

    Args:
        teacher: a 3DGS .ply, a splatfacto .ckpt, its run directory or its config.yml.
        output: the compressed file to write (its folder must exist).
        data: dataset the teacher was trained on (blender or nerfstudio layout), whose images
            are the targets; None renders `views` from the teacher into
            `run_dir/<experiment>-views` and trains on those.
        preset: 'neuralgs', 'cpu' or 'auto' (by device).
        device: 'auto', 'cpu' or 'cuda'.
        fine_tune_iterations, fit_iterations: stage D and stage C steps (None: the preset's;
            the cpu preset scales both for the scene's size, `models.neuralgs.scene_steps`).
        run_dir: where nerfstudio keeps the run (config.yml, checkpoint, logs).
        views: virtual cameras when there is no `data`.
        experiment_name: the run's experiment name (default: the teacher's name).
        model_options: NeuralGSModelConfig fields to set (e.g. {"target_cluster_size": 2500}).
        inspect: called as inspect("stage C", pipeline) after stages A-C and inspect("stage D",
            pipeline) after fine-tuning, for diagnostics (benchmarks/bench_attributes.py).
        target_size: the file's size, bytes or a string such as "500KB" (`rate.parse_size`);
            the file is at most that and at least 90% of it. None: the preset's default (the
            cpu preset's size rule, `rate.default_target_bytes`).
        downscale: divide `data`'s images by this (nerfstudio and COLMAP datasets; the
            images_N folders are written where missing); None: halve until the longest side
            is at most 1600 px (`pipeline_run.dataparser_for`).
        verbose: keep nerfstudio's step table during fine-tuning instead of a progress bar.
        num_devices: processes to fine-tune in, data parallel (`neuralgs_ns.distributed`): GPUs
            on CUDA, shares of the cores on CPU. Rank 0 runs stages A-C.
        after_training: with num_devices > 1, called in every process as
            after_training(rank, trainer) after stage D (a module-level function; diagnostics).

    Raises NeuralGSError (one line) for a missing output folder, an unavailable device or an
    unreadable teacher, before any long work.
    """
    from neuralgs_ns.codec import CompressedScene
    from neuralgs_ns.compress.importance import pruned_count
    from neuralgs_ns.compress.rate import prune_fraction_for_size, target_size_bytes
    from neuralgs_ns.compress.pipeline_run import dataparser_for, render_teacher_dataset
    from neuralgs_ns.formats import load_teacher, teacher_bytes
    from neuralgs_ns.method_configs import neuralgs_trainer, set_fine_tune_iterations
    from neuralgs_ns.models.neuralgs import check_target_size, scene_steps
    from neuralgs_ns.progress import StageTimer, quiet_trainer_log, train_with_progress

    start = time.perf_counter()
    teacher, output, run_dir = Path(teacher), Path(output), Path(run_dir)
    if not output.parent.is_dir():
        raise NeuralGSError(f"{output}: output folder {output.parent} does not exist")
    if num_devices < 1:
        raise NeuralGSError(f"--num-devices must be 1 or more, got {num_devices}")
    if num_devices > 1 and inspect is not None:
        raise NeuralGSError("inspect needs the whole run in this process (num_devices 1)")
    if downscale is not None and data is None:
        raise NeuralGSError("--downscale applies to --data's images; without --data there are none")
    device = resolve_device(device)
    target_size = target_size_bytes(target_size)
    name = experiment_name or teacher_name(teacher)
    views = views if views is not None else TeacherViews()
    timer = StageTimer()
    config = neuralgs_trainer(preset)
    config.machine.device_type = device
    config.pipeline.model.teacher = teacher
    config.pipeline.model.fit_iterations = fit_iterations
    for option, value in (model_options or {}).items():
        if not hasattr(config.pipeline.model, option):
            raise NeuralGSError(f"unknown NeuralGS model option {option!r}")
        setattr(config.pipeline.model, option, value)
    config.pipeline.model.check()
    teacher_gaussians = load_teacher(teacher)  # fail fast, before any long work
    if target_size is not None:
        config.pipeline.model.target_size = str(target_size)
    check_target_size(config.pipeline.model, teacher_gaussians, device)
    targets = data
    if targets is None:
        with timer.stage("Render teacher views"):
            targets = render_teacher_dataset(teacher_gaussians, run_dir / f"{name}-views", views, device)
    config.pipeline.datamanager.dataparser = dataparser_for(targets, downscale if data is not None else 1)
    config.pipeline.datamanager.data = targets
    # Stages C and D's lengths are fixed before stage A: they assume the most pruning the
    # model starts from, which it may lower where the training views see it (prune_psnr_db)
    # or where the target is more than the kept Gaussians' MLPs can spend.
    fraction = config.pipeline.model.prune_fraction
    if target_size is not None:  # the model's first choice; it may prune more if the positions need it
        fraction = prune_fraction_for_size(target_size, len(teacher_gaussians), fraction)
    kept = len(teacher_gaussians) - pruned_count(len(teacher_gaussians), fraction)
    config.pipeline.model.fit_iterations = scene_steps(config.pipeline.model, "fit_iterations", device, kept)
    if fine_tune_iterations is None:
        fine_tune_iterations = scene_steps(config.pipeline.model, "fine_tune_iterations", device, kept)
    set_fine_tune_iterations(config, fine_tune_iterations)
    config.output_dir = run_dir
    config.experiment_name = name
    config.vis = "tensorboard"
    quiet_trainer_log(config, verbose)
    config.machine.num_devices = num_devices
    config.set_timestamp()
    config.save_config()  # config.yml: what ns-viewer / ns-eval / ns-export load
    if num_devices > 1:
        from nerfstudio.utils.eval_utils import eval_setup

        from neuralgs_ns.distributed import run_data_parallel

        with timer.stage(f"Stages A-D on {num_devices} processes"):
            run_data_parallel(config, num_devices, after_training)
        _, pipeline, _, _ = eval_setup(config.get_base_dir() / "config.yml", test_mode="test")
    else:
        trainer = config.setup(local_rank=0, world_size=1)
        trainer.setup()  # stages A-C (NeuralGSPipeline)
        if inspect is not None:
            inspect("stage C", trainer.pipeline)
        with timer.stage("Stage D: fine-tune"):
            train_with_progress(trainer, "fine-tune", verbose)
        pipeline = trainer.pipeline
        if inspect is not None:
            inspect("stage D", pipeline)
    scene = CompressedScene.from_model(pipeline.model)
    n_bytes = scene.save(output)
    with timer.stage("Evaluate held-out views"):
        pipeline.eval()
        metrics = pipeline.get_average_eval_image_metrics()
    render_seconds = {k: v for k, v in timer.seconds.items() if k.startswith("Render")}
    stages = {**render_seconds, **pipeline.model.stage_seconds,
              **{k: v for k, v in timer.seconds.items() if k not in render_seconds}}  # in the order they ran
    metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    return CompressReport(
        teacher=teacher, output=output, teacher_gaussians=len(teacher_gaussians),
        teacher_bytes=teacher_bytes(teacher, teacher_gaussians), compressed_gaussians=len(scene.positions),
        compressed_bytes=n_bytes, psnr=metrics.get("psnr", math.nan), ssim=metrics.get("ssim", math.nan),
        lpips=metrics.get("lpips"), measured_against="dataset images" if data is not None else "teacher renders",
        eval_views=len(pipeline.datamanager.eval_dataset), stage_seconds=stages,
        total_seconds=time.perf_counter() - start, config_path=config.get_base_dir() / "config.yml",
        fit_iterations=config.pipeline.model.fit_iterations, fine_tune_iterations=config.max_num_iterations,
        metrics=metrics,
    )

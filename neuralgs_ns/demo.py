"""`neuralgs demo`: the whole job on the embedded procedural scene.

1. renders the procedural scene (`neuralgs_ns.scenes`) as a blender-format dataset,
2. trains a `splatfacto-portable` teacher on it with nerfstudio's trainer and evaluates it
   on the held-out views,
3. compresses the teacher with NeuralGS (`neuralgs_ns.compress.run.compress`) against the
   same images,
4. prints one table (sizes, held-out PSNR, ratio, wall time per stage) and writes
   `demo.png`: one held-out view as ground truth | teacher | NeuralGS | error map.

Layout of the output folder (reused by later runs: the scene is rewritten, runs are new):

    scene/                        the dataset (train/, val/, transforms_*.json)
    runs/demo/splatfacto-portable/<timestamp>/   the teacher's nerfstudio run
    runs/demo/neuralgs/<timestamp>/              the compressed scene's nerfstudio run
    demo.ngs                      the compressed file
    demo.png                      the picture
"""

from __future__ import annotations

import copy
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from neuralgs_ns.compress.run import CompressReport, format_bytes, format_rows, format_stage_times, resolve_device

EXPERIMENT = "demo"

# Densification of the teacher, as fractions of its training steps (splatfacto's defaults
# are for 30k steps: warm-up 500, refine until 15k, screen-size splits until 4k).
TEACHER_WARMUP_FRACTION = 0.1
TEACHER_REFINE_STOP_FRACTION = 0.6
TEACHER_INITIAL_GAUSSIANS = 5000


@dataclass
class DemoBudget:
    """Sizes and step counts of a demo run, small enough for minutes on a 2-core CPU (the
    README's quick start has a measured run)."""

    teacher_steps: int = 1000
    """splatfacto-portable training steps of the teacher. Few, so that the whole demo takes
    minutes: a longer run grows more Gaussians, and each makes every compression step dearer
    (the measurements are in docs/results/scale.md)."""
    fit_iterations: Optional[int] = None
    """NeuralGS stage C steps (MLP fitting); None: as `neuralgs compress` chooses (4500 for
    a scene this small)."""
    fine_tune_iterations: Optional[int] = None
    """NeuralGS stage D steps (fine-tuning through the rasteriser); None: as `neuralgs
    compress` chooses (4500 for a scene this small)."""
    n_train: int = 40
    """Training views of the procedural scene."""
    n_val: int = 10
    """Held-out views (the PSNR columns average over them)."""
    resolution: int = 96
    """Width and height of the scene's images in pixels."""


@dataclass
class DemoReport:
    """What `run_demo` measured."""

    scene_dir: Path
    budget: DemoBudget
    device: str
    teacher_config_path: Path
    teacher_checkpoint: Path
    teacher_gaussians: int
    teacher_bytes: int
    teacher_psnr: float
    teacher_ssim: float
    teacher_lpips: Optional[float]
    compressed: CompressReport
    picture: Path
    picture_view: Dict[str, float] = field(default_factory=dict)
    """The pictured held-out view: its index ('view') and PSNRs ('teacher', 'NeuralGS')."""
    stage_seconds: Dict[str, float] = field(default_factory=dict)
    """Wall time per stage in run order: scene, teacher training, teacher eval, the
    compression's stages, picture."""
    total_seconds: float = 0.0

    @property
    def ratio(self) -> float:
        return self.teacher_bytes / self.compressed.compressed_bytes

    def format_table(self) -> str:
        b, c = self.budget, self.compressed
        header = (f"NeuralGS demo: procedural scene, {b.n_train} training + {b.n_val} held-out views at "
                  f"{b.resolution}x{b.resolution}, on {self.device}")
        rows: List[tuple] = [
            ("", "Gaussians", "size", "held-out PSNR", "SSIM", ""),
            ("teacher", f"{self.teacher_gaussians:,}", format_bytes(self.teacher_bytes), f"{self.teacher_psnr:.2f} dB",
             f"{self.teacher_ssim:.4f}", f"splatfacto-portable, {b.teacher_steps} steps, 3DGS PLY"),
            ("NeuralGS", f"{c.compressed_gaussians:,}", format_bytes(c.compressed_bytes), f"{c.psnr:.2f} dB",
             f"{c.ssim:.4f}", f"{c.fit_iterations} fit + {c.fine_tune_iterations} fine-tune steps, {c.output}"),
            ("ratio", "", f"{self.ratio:.1f}x", f"{c.psnr - self.teacher_psnr:+.2f} dB", "", ""),
        ]
        lines = [header, "", format_rows(rows), "", format_stage_times(self.stage_seconds, self.total_seconds), "",
                 f"picture: {self.picture} (held-out view {self.picture_view.get('view', 0)}: ground truth | "
                 f"teacher | NeuralGS | error x4)",
                 f"teacher run:  {self.teacher_config_path.parent}",
                 f"NeuralGS run: {c.config_path.parent}",
                 f"look at it:   neuralgs view {c.output}"]
        return "\n".join(lines)

    def print(self) -> None:
        print()
        print(self.format_table())


def prepare_scene(scene_dir: Path, budget: DemoBudget, seed: int) -> Path:
    """Writes the procedural scene into `scene_dir`, replacing an earlier demo's scene."""
    from neuralgs_ns.scenes import make_demo_scene

    for split in ("train", "val"):
        if (scene_dir / split).is_dir():
            shutil.rmtree(scene_dir / split)  # a scene of another size would leave stale views
    return make_demo_scene(scene_dir, n_train=budget.n_train, n_val=budget.n_val, resolution=budget.resolution,
                           seed=seed)


def teacher_config(scene_dir: Path, run_dir: Path, steps: int, device: str):
    """splatfacto-portable's TrainerConfig for the demo teacher: full resolution from the
    first step, white background (the blender dataparser composites onto white),
    densification scaled to `steps`, no evaluation while training, one checkpoint at the end."""
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

    from neuralgs_ns.method_configs import splatfacto_portable

    config = copy.deepcopy(splatfacto_portable.config)
    config.machine.device_type = device
    config.vis = "tensorboard"
    config.output_dir = run_dir
    config.experiment_name = EXPERIMENT
    config.max_num_iterations = steps
    config.steps_per_eval_image = 0
    config.steps_per_eval_batch = 0
    config.steps_per_eval_all_images = 0
    config.steps_per_save = steps + 1  # only the final checkpoint (trainer.train writes it)
    config.pipeline.datamanager.data = scene_dir
    config.pipeline.datamanager.dataparser = BlenderDataParserConfig(data=scene_dir)
    model = config.pipeline.model
    model.num_downscales = 0  # 1/4 resolution first makes every Gaussian "large" on small images
    model.background_color = "white"
    # Random initialisation (the blender format has no points) inside the dataparser's scene
    # box [-1.5, 1.5]^3 rather than splatfacto's 50k in [-5, 5]^3, most of them out of view.
    model.num_random = TEACHER_INITIAL_GAUSSIANS
    model.random_scale = 3.0
    model.warmup_length = max(1, int(TEACHER_WARMUP_FRACTION * steps))
    model.refine_every = max(10, min(model.refine_every, steps // 20))
    model.stop_split_at = max(model.warmup_length + 1, int(TEACHER_REFINE_STOP_FRACTION * steps))
    model.stop_screen_size_at = model.stop_split_at
    model.sh_degree_interval = max(1, min(model.sh_degree_interval, steps // 4))
    # No opacity reset: with densification this short it would leave too few steps to recover.
    model.reset_alpha_every = max(model.reset_alpha_every, steps // model.refine_every + 1)
    return config


def train_teacher(scene_dir: Path, run_dir: Path, steps: int, device: str, seed: int, verbose: bool = False):
    """Trains the teacher; returns (config, trainer)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    from neuralgs_ns.progress import quiet_trainer_log, train_with_progress

    config = teacher_config(scene_dir, run_dir, steps, device)
    quiet_trainer_log(config, verbose)
    config.set_timestamp()
    config.save_config()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    train_with_progress(trainer, "train the teacher", verbose)
    return config, trainer


def write_picture(path: Path, scene_dir: Path, teacher_ckpt: Path, compressed_file: Path, device: str = "cpu",
                  error_gain: float = 4.0) -> Dict[str, float]:
    """`path` (PNG): one held-out view as ground truth | teacher | NeuralGS | |NeuralGS - GT|
    times `error_gain`, labelled with the view's PSNRs. The view is the one of median NeuralGS
    PSNR (a typical one, not the best). Returns the view's index and PSNRs."""
    import matplotlib
    import numpy as np
    import torch
    from PIL import Image, ImageDraw

    from neuralgs_ns.codec import CompressedScene
    from neuralgs_ns.compress.pipeline_run import dataset_views, psnr
    from neuralgs_ns.formats import load_teacher
    from neuralgs_ns.utils import atomic_write_bytes, png_bytes

    scenes = {"teacher": load_teacher(teacher_ckpt).to(device),
              "NeuralGS": CompressedScene.load(compressed_file).decode().to(device)}
    white = torch.ones(1, 3, device=device)
    views = []
    for viewmat, K, w, h, gt in dataset_views(scene_dir, "val"):
        with torch.no_grad():
            renders = {name: g.render(viewmat[None].to(device), K[None].to(device), w, h,
                                      backgrounds=white)[0][0].clamp(0, 1).cpu()
                       for name, g in scenes.items()}
        views.append((gt, renders, {name: psnr(img, gt) for name, img in renders.items()}))
    view = sorted(range(len(views)), key=lambda i: views[i][2]["NeuralGS"])[len(views) // 2]
    gt, renders, view_psnr = views[view]
    h, w = gt.shape[:2]
    error = ((renders["NeuralGS"] - gt).abs().mean(-1) * error_gain).clamp(0, 1).numpy()
    error_rgb = matplotlib.colormaps["inferno"](error)[..., :3].astype(np.float32)
    panels = [gt.numpy(), renders["teacher"].numpy(), renders["NeuralGS"].numpy(), error_rgb]
    labels = [f"ground truth (view {view})", f"teacher {view_psnr['teacher']:.1f} dB", f"NeuralGS {view_psnr['NeuralGS']:.1f} dB",
              f"|NeuralGS - GT| x{error_gain:g}"]
    zoom = max(1, math.ceil(192 / w))
    gap, bar = 4, 16
    sheet = Image.new("RGB", (4 * w * zoom + 3 * gap, h * zoom + bar), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (panel, label) in enumerate(zip(panels, labels)):
        image = Image.fromarray((panel * 255).round().astype(np.uint8)).resize((w * zoom, h * zoom), Image.NEAREST)
        x = i * (w * zoom + gap)
        sheet.paste(image, (x, bar))
        draw.text((x + 2, 2), label, fill="black")
    atomic_write_bytes(path, png_bytes(np.asarray(sheet)))
    return {"view": view, **view_psnr}


def run_demo(output_dir: Path = Path("neuralgs-demo"), budget: Optional[DemoBudget] = None, device: str = "auto",
             seed: int = 0, verbose: bool = False) -> DemoReport:
    """The whole demo (see the module docstring); returns its report."""
    from nerfstudio.utils.rich_utils import CONSOLE

    from neuralgs_ns.compress.run import compress
    from neuralgs_ns.formats import load_teacher
    from neuralgs_ns.progress import StageTimer

    start = time.perf_counter()
    budget = budget if budget is not None else DemoBudget()
    device = resolve_device(device)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    run_dir = output_dir / "runs"
    timer = StageTimer()

    with timer.stage("scene"):
        scene_dir = prepare_scene(output_dir / "scene", budget, seed)
    with timer.stage("teacher training"):
        config, trainer = train_teacher(scene_dir, run_dir, budget.teacher_steps, device, seed, verbose)
    with timer.stage("teacher eval"):
        pipeline = trainer.pipeline
        pipeline.eval()
        teacher_metrics = pipeline.get_average_eval_image_metrics()
    del trainer, pipeline
    checkpoint = sorted(config.get_checkpoint_dir().glob("step-*.ckpt"), key=lambda p: int(p.stem.split("-")[1]))[-1]
    teacher = load_teacher(checkpoint)
    CONSOLE.log(f"teacher: {len(teacher)} Gaussians, held-out PSNR {teacher_metrics['psnr']:.2f} dB")

    compressed = compress(checkpoint, output_dir / "demo.ngs", data=scene_dir, preset="cpu",
                          device=device, fine_tune_iterations=budget.fine_tune_iterations,
                          fit_iterations=budget.fit_iterations, run_dir=run_dir, experiment_name=EXPERIMENT,
                          verbose=verbose)
    with timer.stage("picture"):
        picture = output_dir / "demo.png"
        picture_view = write_picture(picture, scene_dir, checkpoint, compressed.output, device=device)

    seconds = dict(timer.seconds)
    stages = {k: seconds.pop(k) for k in ("scene", "teacher training", "teacher eval")}
    stages.update(compressed.stage_seconds)
    other = compressed.total_seconds - sum(compressed.stage_seconds.values())
    if other >= 0.05:
        stages["NeuralGS setup, saving"] = other
    stages.update(seconds)
    lpips = teacher_metrics.get("lpips")
    return DemoReport(
        scene_dir=scene_dir, budget=budget, device=device, teacher_config_path=config.get_base_dir() / "config.yml",
        teacher_checkpoint=checkpoint, teacher_gaussians=len(teacher), teacher_bytes=compressed.teacher_bytes,
        teacher_psnr=float(teacher_metrics["psnr"]), teacher_ssim=float(teacher_metrics["ssim"]),
        teacher_lpips=None if lpips is None else float(lpips), compressed=compressed, picture=picture,
        picture_view=picture_view, stage_seconds=stages, total_seconds=time.perf_counter() - start,
    )

"""The `neuralgs` command (tyro subcommands): compress, decode, demo.

`demo` is still a placeholder (the full demo lands with its issue), and `compress` writes a
provisional container until the .ngs bitstream lands. User errors (`NeuralGSError`) print as
one line on stderr with exit status 1, never a traceback.
"""

from __future__ import annotations

import io
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import tyro

from neuralgs_ns.compress.pipeline_run import TeacherViews
from neuralgs_ns.errors import NeuralGSError


@dataclass
class Demo:
    """Placeholder until the NeuralGS demo lands: renders a procedural Gaussian scene on
    this machine's CPU (or GPU) with the project's rasteriser and writes a contact sheet PNG."""

    output_dir: Path = Path("neuralgs-demo")
    """Folder for demo.png; created if missing."""
    views: int = 8
    """Number of views around the scene."""
    resolution: int = 128
    """Image width and height in pixels."""

    def main(self) -> None:
        import numpy as np
        import torch
        from PIL import Image

        from neuralgs_ns.render import rasterize
        from neuralgs_ns.utils import atomic_write_bytes, look_at_viewmats

        print("neuralgs demo: placeholder - the compression pipeline is not implemented yet;")
        print("rendering a procedural scene with the CPU/CUDA rasteriser instead.")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        g = torch.Generator().manual_seed(0)
        # A torus knot of small coloured Gaussians.
        n = 20000
        t = torch.rand(n, generator=g) * 2 * math.pi
        p, q = 2, 3
        r = 0.6 + 0.25 * torch.cos(q * t)
        knot = torch.stack([r * torch.cos(p * t), r * torch.sin(p * t), 0.25 * torch.sin(q * t)], -1)
        means = knot + 0.04 * torch.randn(n, 3, generator=g)
        quats = torch.randn(n, 4, generator=g)
        scales = torch.full((n, 3), 0.012) * torch.rand(n, 3, generator=g).add(0.5)
        opacities = torch.full((n,), 0.8)
        colors = torch.stack([0.5 + 0.5 * torch.cos(t), 0.5 + 0.5 * torch.sin(2 * t), 0.5 + 0.5 * torch.cos(3 * t)], -1)
        size = self.resolution
        viewmats = look_at_viewmats(self.views, radius=3.0, elevation_deg=25.0)
        f = 0.5 * size / math.tan(math.radians(25))
        Ks = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]]).expand(self.views, 3, 3)
        tensors = [x.to(device) for x in (means, quats, scales, opacities, colors, viewmats, Ks)]
        rasterize(*tensors, size, size)  # warm-up: JIT compilation on CPU
        t0 = time.perf_counter()
        renders, _, info = rasterize(*tensors, size, size, backgrounds=torch.ones(self.views, 3, device=device))
        ms = (time.perf_counter() - t0) * 1e3
        sheet = renders.clamp(0, 1).mul(255).byte().cpu().numpy()
        sheet = np.concatenate(list(sheet), axis=1)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        out = self.output_dir / "demo.png"
        buf = io.BytesIO()
        Image.fromarray(sheet).save(buf, format="PNG")
        atomic_write_bytes(out, buf.getvalue())
        print(f"rendered {n} Gaussians x {self.views} views at {size}x{size} on {device} in {ms:.0f} ms")
        print(f"wrote {out}")


@dataclass
class Compress:
    """Compresses a trained splat (a 3DGS .ply, or a splatfacto run) with NeuralGS."""

    teacher: tyro.conf.Positional[Path]
    """A 3DGS .ply, a splatfacto .ckpt, its run directory or its config.yml."""
    output: Path
    """The compressed file to write (provisional format until the .ngs bitstream lands)."""
    data: Optional[Path] = None
    """Dataset the teacher was trained on (blender or nerfstudio layout): its images are the
    targets. Without it, views rendered from the teacher around the scene are."""
    preset: Literal["auto", "neuralgs", "cpu"] = "auto"
    """'neuralgs' (paper settings, for GPUs), 'cpu' (small and quick), 'auto' (by device)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train; auto is CUDA when present."""
    fine_tune_iterations: Optional[int] = None
    """Stage D steps (default: the preset's)."""
    fit_iterations: Optional[int] = None
    """Stage C steps (default: the preset's)."""
    run_dir: Path = Path("neuralgs-runs")
    """Where nerfstudio keeps the run (config.yml, checkpoint, logs) for ns-viewer / ns-eval."""
    views: TeacherViews = field(default_factory=TeacherViews)
    """Virtual cameras when there is no --data."""

    def main(self) -> None:
        import torch

        from neuralgs_ns.codec import CompressedScene
        from neuralgs_ns.compress.pipeline_run import dataparser_for, render_teacher_dataset
        from neuralgs_ns.gaussians import load_teacher, ply_size
        from neuralgs_ns.method_configs import neuralgs_trainer
        from neuralgs_ns.progress import StageTimer

        if not self.output.parent.is_dir():
            raise NeuralGSError(f"{self.output}: output folder {self.output.parent} does not exist")
        device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
        if device == "cuda" and not torch.cuda.is_available():
            raise NeuralGSError("--device cuda: no CUDA device is available")
        teacher = load_teacher(self.teacher)  # fail fast, before any long work
        timer = StageTimer()
        data = self.data
        if data is None:
            with timer.stage("Render teacher views"):
                data = render_teacher_dataset(teacher, self.run_dir / f"{_teacher_name(self.teacher)}-views", self.views,
                                              device)
        config = neuralgs_trainer(self.preset)
        config.machine.device_type = device
        config.pipeline.datamanager.dataparser = dataparser_for(data)
        config.pipeline.datamanager.data = data
        config.pipeline.model.teacher = self.teacher
        config.pipeline.model.fit_iterations = self.fit_iterations
        if self.fine_tune_iterations is not None:
            config.max_num_iterations = config.steps_per_save = config.steps_per_eval_all_images = self.fine_tune_iterations
        config.output_dir = self.run_dir
        config.experiment_name = _teacher_name(self.teacher)
        config.vis = "tensorboard"
        config.set_timestamp()
        config.save_config()  # config.yml: what ns-viewer / ns-eval / ns-export load
        trainer = config.setup(local_rank=0, world_size=1)
        trainer.setup()
        with timer.stage("Stage D: fine-tune"):
            trainer.train()
        pipeline = trainer.pipeline
        scene = CompressedScene.from_model(pipeline.model)
        n_bytes = scene.save(self.output)
        with timer.stage("Evaluate held-out views"):
            pipeline.eval()
            metrics = pipeline.get_average_eval_image_metrics()
        teacher_bytes = ply_size(teacher)
        stages = {**{k: v for k, v in timer.seconds.items() if k.startswith("Render")}, **pipeline.model.stage_seconds,
                  **timer.seconds}  # in the order they ran
        print()
        print(f"teacher      {len(teacher):>9} Gaussians  {teacher_bytes / 2**20:9.2f} MiB (3DGS PLY)")
        print(f"compressed   {len(scene.positions):>9} Gaussians  {n_bytes / 2**20:9.2f} MiB  "
              f"ratio {teacher_bytes / n_bytes:.1f}x  -> {self.output}")
        target = "dataset images" if self.data is not None else "teacher renders"
        print(f"held-out PSNR {metrics.get('psnr', float('nan')):.2f} dB, SSIM {metrics.get('ssim', float('nan')):.4f} "
              f"(vs {target})")
        print("wall time: " + ", ".join(f"{name} {sec:.0f} s" for name, sec in stages.items()))
        print(f"run: {config.get_base_dir()} (open with ns-viewer --load-config {config.get_base_dir() / 'config.yml'})")


def _teacher_name(path: Path) -> str:
    """A run name for the teacher: the .ply's stem, or the experiment name of its nerfstudio
    run (outputs/<experiment>/<method>/<timestamp>/nerfstudio_models/step-N.ckpt)."""
    from neuralgs_ns.gaussians import find_checkpoint

    if path.suffix.lower() == ".ply":
        return path.stem
    run_dir = find_checkpoint(path).parent.parent
    return run_dir.parent.parent.name or run_dir.name


@dataclass
class Decode:
    """Decodes a compressed file back to an ordinary 3DGS scene."""

    input: tyro.conf.Positional[Path]
    """The compressed file."""
    output: Path
    """Where to write it: .ply (Inria 3DGS layout)."""

    def main(self) -> None:
        from neuralgs_ns.codec import CompressedScene
        from neuralgs_ns.gaussians import write_ply

        if self.output.suffix.lower() != ".ply":
            raise NeuralGSError(f"{self.output}: only .ply output is supported so far")
        gaussians = CompressedScene.load(self.input).decode()
        write_ply(gaussians, self.output)
        print(f"wrote {len(gaussians)} Gaussians to {self.output}")


def main(argv=None) -> int:
    commands = {"compress": Compress, "decode": Decode, "demo": Demo}
    try:
        cmd = tyro.extras.subcommand_cli_from_dict(commands, args=argv, prog="neuralgs")
        cmd.main()
    except NeuralGSError as err:
        print(f"neuralgs: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

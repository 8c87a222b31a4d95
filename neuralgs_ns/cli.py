"""The `neuralgs` command (tyro subcommands): compress, decode, info, view, demo, bench.

User errors (`NeuralGSError`) print as one line on stderr with exit status 1, never a traceback.
"""

from __future__ import annotations

import signal
import sys
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Tuple

import tyro

# nerfstudio 1.1.5 meets today's torch with warnings the user can do nothing about: torch.jit.script
# is deprecated (two lines on every command, and before every one-line error, as nerfstudio is
# imported), and each training run's trainer makes a torch.cuda.amp.GradScaler (deprecated) and
# logs its losses with float() on tensors that require grad.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
warnings.filterwarnings("ignore", message=r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated",
                        category=FutureWarning, module=r"nerfstudio\.engine\.trainer")
warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar",
                        category=UserWarning, module=r"nerfstudio\.utils\.writer")

from neuralgs_ns.bench import DEFAULT_METHODS  # noqa: E402 (after the filter)
from neuralgs_ns.compress.pipeline_run import TeacherViews  # noqa: E402 (after the filter)
from neuralgs_ns.demo import DemoBudget  # noqa: E402 (after the filter)
from neuralgs_ns.errors import NeuralGSError  # noqa: E402 (after the filter)


@dataclass
class Demo:
    """The whole job on the embedded procedural scene: renders it, trains a splatfacto-portable
    teacher, compresses it with NeuralGS, prints sizes, held-out PSNR and wall time per stage,
    and writes demo.png (a held-out view: ground truth | teacher | NeuralGS | error)."""

    output_dir: Path = Path("neuralgs-demo")
    """Folder for the scene, the nerfstudio runs, demo.ngs and demo.png; reused by later runs
    (the scene is rewritten, runs get new timestamps)."""
    teacher_steps: int = DemoBudget.teacher_steps
    """splatfacto-portable training steps of the teacher (more: a sharper teacher with more
    Gaussians, and a slower compression)."""
    fit_iterations: Optional[int] = DemoBudget.fit_iterations
    """NeuralGS stage C steps (MLP fitting; default: as `neuralgs compress` chooses)."""
    fine_tune_iterations: Optional[int] = DemoBudget.fine_tune_iterations
    """NeuralGS stage D steps (fine-tuning; default: as `neuralgs compress` chooses)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train; auto is CUDA when present."""
    seed: int = 0
    """Seed of the scene (views, texture) and of the teacher's initialisation."""
    train_views: int = DemoBudget.n_train
    """Training views of the scene."""
    val_views: int = DemoBudget.n_val
    """Held-out views of the scene."""
    resolution: int = DemoBudget.resolution
    """Width and height of the scene's images in pixels."""
    verbose: bool = False
    """Show nerfstudio's step table while training instead of one progress bar per stage."""

    def main(self) -> None:
        from neuralgs_ns.demo import run_demo

        if self.train_views < 1 or self.val_views < 1 or self.resolution < 16:
            raise NeuralGSError("need --train-views >= 1, --val-views >= 1 and --resolution >= 16")
        if min(self.teacher_steps, self.fit_iterations or 1, self.fine_tune_iterations or 1) < 1:
            raise NeuralGSError("--teacher-steps, --fit-iterations and --fine-tune-iterations must be >= 1")
        budget = DemoBudget(teacher_steps=self.teacher_steps, fit_iterations=self.fit_iterations,
                            fine_tune_iterations=self.fine_tune_iterations, n_train=self.train_views,
                            n_val=self.val_views, resolution=self.resolution)
        run_demo(self.output_dir, budget, device=self.device, seed=self.seed, verbose=self.verbose).print()


@dataclass
class Compress:
    """Compresses a trained splat (a 3DGS .ply, .spz, .splat or .sog, or a splatfacto run) with NeuralGS."""

    teacher: tyro.conf.Positional[Path]
    """A 3DGS .ply, .spz, .splat or .sog, a splatfacto .ckpt, its run directory or its config.yml."""
    output: Path
    """The .ngs file to write."""
    data: Optional[Path] = None
    """Dataset the teacher was trained on (blender, nerfstudio or COLMAP layout, told apart by
    its files): its images are the targets. Without it, views rendered from the teacher
    around the scene are."""
    downscale: Optional[int] = None
    """Divide --data's images by this (nerfstudio and COLMAP datasets; missing images_N folders
    are written). Default: halve until the longest side is at most 1600 px, as nerfstudio does."""
    preset: Literal["auto", "neuralgs", "cpu"] = "auto"
    """'neuralgs' (paper settings, for GPUs), 'cpu' (small and quick), 'auto' (by device)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train; auto is CUDA when present."""
    fine_tune_iterations: Optional[int] = None
    """Stage D steps (default: the preset's; with the cpu preset scaled by 90k over the Gaussians
    kept after pruning, from 3 times the preset's to a fifth)."""
    fit_iterations: Optional[int] = None
    """Stage C steps (default: as for stage D)."""
    run_dir: Path = Path("neuralgs-runs")
    """Where nerfstudio keeps the run (config.yml, checkpoint, logs) for ns-viewer / ns-eval."""
    views: TeacherViews = field(default_factory=TeacherViews)
    """Virtual cameras when there is no --data."""
    position_bits: Optional[int] = None
    """Grid resolution per axis of the stored positions (1-16); each bit costs about 3 bits
    per Gaussian. Default: the coarsest grid the teacher's renders barely notice (10-16)."""
    weight_precision: Literal["int8", "float16"] = "int8"
    """How the MLP weights are stored; fine-tuning trains the stored values either way."""
    prune_fraction: Optional[float] = None
    """Share of the least important Gaussians to drop in stage A, in [0, 1) (default: the
    paper's 0.4; a small --target-size may prune more, a large one less)."""
    target_size: Optional[str] = None
    """Size of the file to write: bytes, or e.g. 500KB, 1.5MB, 800KiB (K, M decimal). The file
    is at most this and at least 90% of it; too small a size is refused up front with the
    smallest possible. Default (cpu preset): 11 bits per teacher Gaussian plus 0.45 per
    attribute, 36.2 at SH degree 3 and 16 at degree 0 (`compress.rate.default_target_bytes`);
    the paper preset keeps its fixed settings."""
    verbose: bool = False
    """Show nerfstudio's step table while fine-tuning instead of a progress bar."""
    num_devices: int = 1
    """Fine-tune data parallel in this many processes (GPUs on CUDA, shares of the cores on
    CPU); rank 0 runs stages A-C. On GPUs, `ns-train neuralgs --machine.num-devices N` does the
    same through nerfstudio's launcher."""

    def main(self) -> None:
        from neuralgs_ns.compress.run import compress

        options = {"position_bits": self.position_bits, "field_precision": self.weight_precision}
        if self.prune_fraction is not None:  # checked with the other model options (NeuralGSModelConfig.check)
            options["prune_fraction"] = self.prune_fraction
        report = compress(self.teacher, self.output, data=self.data, preset=self.preset, device=self.device,
                          fine_tune_iterations=self.fine_tune_iterations, fit_iterations=self.fit_iterations,
                          run_dir=self.run_dir, views=self.views, target_size=self.target_size,
                          downscale=self.downscale, verbose=self.verbose, num_devices=self.num_devices,
                          model_options=options)
        report.print()


@dataclass
class Decode:
    """Decodes a .ngs file back to an ordinary 3DGS scene."""

    input: tyro.conf.Positional[Path]
    """The .ngs file."""
    output: Path
    """Where to write it: .ply (Inria 3DGS layout), .spz (Niantic), .splat (antimatter15) or
    .sog (PlayCanvas SOG bundle)."""
    spz_version: Optional[Literal[2, 3, 4]] = None
    """SPZ version of a .spz output: 4 (zstd streams; what Niantic's library writes by default,
    and the one written when not given), 3 (gzip, smallest-three rotations: for viewers that
    predate version 4) or 2 (gzip, x, y, z rotations: for older ones)."""
    max_clusters: Optional[int] = None
    """Decode only the first K clusters (the largest; they come first in the file): a coarse
    preview from the head of the file."""

    def main(self) -> None:
        from neuralgs_ns.codec import CompressedScene
        from neuralgs_ns.formats import check_output_path, write_gaussians

        if self.max_clusters is not None and self.max_clusters < 1:
            raise NeuralGSError("--max-clusters must be at least 1")
        check_output_path(self.output, spz_version=self.spz_version)  # before the work: a typo costs nothing
        gaussians = CompressedScene.load(self.input, max_clusters=self.max_clusters).decode()
        write_gaussians(gaussians, self.output, spz_version=self.spz_version)
        print(f"wrote {len(gaussians):,} Gaussians to {self.output}")


@dataclass
class Info:
    """Prints a .ngs file's size breakdown by section and bits per Gaussian."""

    input: tyro.conf.Positional[Path]
    """The .ngs file."""
    json: bool = False
    """Print the same as JSON."""

    def main(self) -> None:
        from neuralgs_ns.codec import format_info, info_json, read_info

        info = read_info(self.input)
        print(info_json(info) if self.json else format_info(info))


@dataclass
class View:
    """Opens a splat file in nerfstudio's web viewer, no dataset needed: a .ngs (shown as its
    clusters decode, largest first), .ply, .spz, .splat or .sog, a splatfacto run, or a neuralgs
    run (its scene.ngs). The first camera looks at the scene's bulk from outside it."""

    input: tyro.conf.Positional[Path]
    """The file, or a nerfstudio run directory or its config.yml."""
    port: int = 7007
    """Port of the viewer (nerfstudio's default; the next free one if taken)."""
    host: str = "0.0.0.0"
    """Address to listen on (0.0.0.0: every interface, as nerfstudio does)."""
    up: Literal["+z", "-z", "+y", "-y", "+x", "-x"] = "+z"
    """The scene's up axis: +z for nerfstudio runs and their exports, -y for scenes in COLMAP's
    frame (most .ply files from the original 3DGS code)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to render; auto is CUDA when present."""

    def main(self) -> None:
        from neuralgs_ns.compress.run import resolve_device
        from neuralgs_ns.view import serve

        if not 1 <= self.port <= 65535:
            raise NeuralGSError(f"--port {self.port} is not a TCP port (1-65535)")
        serve(self.input, port=self.port, host=self.host, up=self.up, device=resolve_device(self.device))


@dataclass
class Bench:
    """Compares NeuralGS with what you already have on one teacher: PLY, half-float PLY, SPZ, SOG,
    importance pruning (alone and followed by SPZ) and gsplat's PNG compression, with NeuralGS
    as a rate-distortion curve of target sizes. Per method: size, ratio to the teacher file,
    encode / decode / render times and held-out PSNR, SSIM (and LPIPS when available).
    Writes results.json, results.md (a table for a README), rd.png and strip.png."""

    teacher: tyro.conf.Positional[Path]
    """A 3DGS .ply, .spz, .splat or .sog, a splatfacto .ckpt, its run directory or its config.yml."""
    output_dir: Path
    """Folder for the results, each method's file and the NeuralGS runs (created if its parent exists)."""
    data: Optional[Path] = None
    """Dataset the teacher was trained on: its val split is the held-out views (scored against
    its images and the teacher's renders), its train split feeds importance and NeuralGS.
    Without it, the teacher's renders (--views) are the dataset and the only reference."""
    methods: Tuple[str, ...] = DEFAULT_METHODS
    """Which to run, in order: ply, ply-fp16, spz, spz-gsply, sog, prune-40, prune-66, prune-40-spz,
    prune-66-spz, png-gsplat, neuralgs (the default rate), neuralgs@SIZE (--target-size SIZE,
    e.g. neuralgs@500KB) and neuralgs-curve (0.5, 0.7, 1.4 and 2 times the default's size)."""
    preset: Literal["auto", "neuralgs", "cpu"] = "auto"
    """NeuralGS preset: 'neuralgs' (paper settings, for GPUs), 'cpu', 'auto' (by device)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to render and train; auto is CUDA when present."""
    neuralgs_fine_tune_iterations: Optional[int] = None
    """NeuralGS stage D steps (default: as `neuralgs compress` chooses)."""
    neuralgs_fit_iterations: Optional[int] = None
    """NeuralGS stage C steps (default: as `neuralgs compress` chooses)."""
    views: TeacherViews = field(default_factory=TeacherViews)
    """Virtual cameras when there is no --data."""

    def main(self) -> None:
        from neuralgs_ns.bench import command_line, run_bench, write_outputs

        result = run_bench(self.teacher, self.output_dir, data=self.data, methods=self.methods, preset=self.preset,
                           device=self.device, fine_tune_iterations=self.neuralgs_fine_tune_iterations,
                           fit_iterations=self.neuralgs_fit_iterations, views=self.views, command=command_line(self))
        paths = write_outputs(result, self.output_dir)
        result.print()
        print(f"\nwrote {', '.join(str(p) for p in paths.values())}")


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that `finally` blocks remove temporary files."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def main(argv=None) -> int:
    commands = {"compress": Compress, "decode": Decode, "info": Info, "view": View, "demo": Demo, "bench": Bench}
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        cmd = tyro.extras.subcommand_cli_from_dict(commands, args=argv, prog="neuralgs")
        cmd.main()
    except NeuralGSError as err:
        print(f"neuralgs: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        # Outputs are written atomically: an interrupted command leaves none behind.
        terminated = isinstance(err, _Terminated)
        print(f"neuralgs: {'terminated' if terminated else 'interrupted'}; the file being written was removed",
              file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())

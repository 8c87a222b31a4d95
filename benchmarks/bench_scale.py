"""How time and memory grow with the scene: `neuralgs compress` without data (cpu preset) on
SH-3 scenes of increasing size made from one trained splat.

    # the demo's teacher grown to 50k, 200k and 1M Gaussians
    python benchmarks/bench_scale.py neuralgs-demo/runs/demo/splatfacto-portable/<timestamp> --sizes 50000 200000 1000000
    # a quick look at the small end
    python benchmarks/bench_scale.py scene.ply --sizes 10000 50000 --json-out scale.json
    # 1M in about 10 minutes: shortened steps, the default's time estimated (docs/results/scale.md)
    python benchmarks/bench_scale.py scene.ply --sizes 1000000 --fit-iterations 300 --fine-tune-iterations 30

A scene of N Gaussians is the source split and jittered: each source Gaussian becomes about
N / n copies spread inside its own ellipsoid (one sigma), their scales shrunk by the cube root
of the copy count and their opacities kept, so coverage and overdraw stay those of a trained
capture rather than of random points (which flatter the rasteriser). Sizes below the source
keep its most opaque Gaussians. Each size runs in a fresh process, so its peak RSS is its own;
its console output goes to `<workdir>/n<size>/compress.log` (a 1M-Gaussian run takes hours on
2 cores: watch it there), and the JSON is rewritten after every size, so a run stopped early
keeps the sizes it finished. Prints, per size: seconds per stage, stage C and D steps and
seconds per step, peak RSS, file size, ratio and PSNR against the teacher's renders of held-out
views. With shortened steps (--fit-iterations, --fine-tune-iterations) the table also estimates
the total at the default steps from the measured seconds per step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List

import torch

from neuralgs_ns.gaussians import Gaussians


def grown_scene(source: Gaussians, n: int, seed: int = 0) -> Gaussians:
    """`source` split and jittered (or thinned) to `n` Gaussians (see the module docstring)."""
    if n <= len(source):
        keep = torch.argsort(source.opacities[:, 0], descending=True)[:n]
        return source.subset(keep)
    g = torch.Generator().manual_seed(seed)
    copies = n / len(source)
    parent = torch.arange(n) % len(source)
    quats = torch.nn.functional.normalize(source.quats[parent], dim=-1)
    w, x, y, z = quats.unbind(-1)
    rot = torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                       2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                       2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], dim=-1).reshape(-1, 3, 3)
    offsets = torch.randn(n, 3, generator=g) * torch.exp(source.scales[parent])
    means = source.means[parent] + torch.einsum("nij,nj->ni", rot, offsets)
    return Gaussians(means=means, scales=source.scales[parent] - math.log(copies) / 3, quats=source.quats[parent],
                     opacities=source.opacities[parent], features_dc=source.features_dc[parent],
                     features_rest=source.features_rest[parent])


def run_one(ply: Path, workdir: Path, fine_tune_iterations: int | None, fit_iterations: int | None) -> dict:
    """One compress run in this process; its numbers, peak RSS included."""
    from neuralgs_ns.compress.run import compress
    from neuralgs_ns.models.neuralgs import NeuralGSModelConfig, scene_steps

    report = compress(ply, workdir / "scene.ngs", preset="cpu", device="cpu", run_dir=workdir / "runs",
                      fine_tune_iterations=fine_tune_iterations, fit_iterations=fit_iterations)
    stage_c = report.stage_seconds.get("Stage C: fit MLPs", math.nan)
    stage_d = report.stage_seconds.get("Stage D: fine-tune", math.nan)
    # What the default steps would have cost, from this run's seconds per step (exact when
    # the run used them; the trainer's fixed costs make a short run's estimate a little high).
    defaults = {name: scene_steps(NeuralGSModelConfig(preset="cpu"), name, "cpu", report.compressed_gaussians)
                for name in ("fit_iterations", "fine_tune_iterations")}
    estimated = (report.total_seconds
                 + stage_c * (defaults["fit_iterations"] / report.fit_iterations - 1)
                 + stage_d * (defaults["fine_tune_iterations"] / report.fine_tune_iterations - 1))
    return dict(gaussians=report.teacher_gaussians, kept=report.compressed_gaussians,
                stage_seconds=report.stage_seconds, total_seconds=report.total_seconds,
                fit_iterations=report.fit_iterations, stage_c_seconds_per_step=stage_c / report.fit_iterations,
                fine_tune_iterations=report.fine_tune_iterations,
                stage_d_seconds_per_step=stage_d / report.fine_tune_iterations,
                default_fit_iterations=defaults["fit_iterations"],
                default_fine_tune_iterations=defaults["fine_tune_iterations"], estimated_default_seconds=estimated,
                bytes=report.compressed_bytes, ratio=report.ratio, psnr=report.psnr,
                peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)  # ru_maxrss is in KiB


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a trained splat (.ply, .spz, .sog, .splat, checkpoint or run)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000, 1_000_000])
    parser.add_argument("--fine-tune-iterations", type=int, help="stage D steps (default: compress's choice)")
    parser.add_argument("--fit-iterations", type=int, help="stage C steps (default: compress's choice)")
    parser.add_argument("--workdir", type=Path, help="where scenes and runs go (default: a temporary folder)")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: run one prepared .ply
    args = parser.parse_args(argv)
    if args.one is not None:
        print("RESULT " + json.dumps(run_one(args.one, args.one.parent, args.fine_tune_iterations,
                                             args.fit_iterations)), flush=True)
        return

    from neuralgs_ns.formats import load_teacher, write_ply

    source = load_teacher(args.source)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    results = []
    for n in args.sizes:
        scene_dir = workdir / f"n{n}"
        scene_dir.mkdir(parents=True, exist_ok=True)
        ply = scene_dir / "teacher.ply"
        write_ply(grown_scene(source, n), ply)
        command = [sys.executable, __file__, str(args.source), "--one", str(ply)]
        for option in ("fine_tune_iterations", "fit_iterations"):
            if getattr(args, option) is not None:
                command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
        log = scene_dir / "compress.log"
        print(f"{n:,} Gaussians: compressing (log: {log})", flush=True)
        with open(log, "w") as out:
            returncode = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, text=True).returncode
        lines = [line for line in log.read_text().splitlines() if line.startswith("RESULT ")]
        if returncode != 0 or not lines:
            print(f"{n:,} Gaussians: failed (exit {returncode}), see {log}", file=sys.stderr)
            continue
        results.append(json.loads(lines[-1][len("RESULT "):]))
        r = results[-1]
        print(f"{n:,} Gaussians: {r['total_seconds'] / 60:.1f} min, stage D {r['stage_d_seconds_per_step']:.3f} s/step, "
              f"peak RSS {r['peak_rss_gib']:.2f} GiB, {r['bytes']:,} B ({r['ratio']:.1f}x), {r['psnr']:.2f} dB", flush=True)
        if args.json_out is not None:
            args.json_out.write_text(json.dumps(results, indent=2) + "\n")

    print(f"\n{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, cpu preset, no data\n")
    stages = sorted({s for r in results for s in r["stage_seconds"]}, key=lambda s: list(results[0]["stage_seconds"]).index(s)
                    if s in results[0]["stage_seconds"] else 99)
    print("| Gaussians | kept | " + " | ".join(stages) + " | total | steps (C + D) | s/step (C, D) "
          "| at the default steps | peak RSS | size | ratio | PSNR |")
    print("|---:" * (len(stages) + 10) + "|")
    for r in results:
        cells = [f"{r['gaussians']:,}", f"{r['kept']:,}"] + [f"{r['stage_seconds'].get(s, 0):.0f} s" for s in stages]
        shortened = (r["fit_iterations"], r["fine_tune_iterations"]) != (r["default_fit_iterations"],
                                                                          r["default_fine_tune_iterations"])
        at_default = (f"~{r['estimated_default_seconds'] / 60:.0f} min ({r['default_fit_iterations']} + "
                      f"{r['default_fine_tune_iterations']}, estimated)" if shortened else "as run")
        cells += [f"{r['total_seconds'] / 60:.1f} min", f"{r['fit_iterations']} + {r['fine_tune_iterations']}",
                  f"{r['stage_c_seconds_per_step']:.3f}, {r['stage_d_seconds_per_step']:.3f}", at_default,
                  f"{r['peak_rss_gib']:.2f} GiB", f"{r['bytes']:,} B", f"{r['ratio']:.1f}x", f"{r['psnr']:.2f} dB"]
        print("| " + " | ".join(cells) + " |")
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

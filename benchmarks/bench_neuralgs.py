"""NeuralGS quality bars: compression ratio, held-out PSNR and wall time of `compress`.

    # (a) a trained splatfacto teacher with its dataset (lego-200): teacher vs compressed val PSNR
    python benchmarks/bench_neuralgs.py --lego-teacher outputs/.../step-000007000.ckpt --data data/lego-200
    # (b) a plain 3DGS .ply without data: PSNR vs the teacher's renders on held-out views
    python benchmarks/bench_neuralgs.py --ply scene-50k.ply
    # helper for (b): the 50k most important Gaussians of a trained teacher as a 3DGS .ply
    python benchmarks/bench_neuralgs.py --make-ply-from outputs/.../step-000007000.ckpt --gaussians 50000 --out scene-50k.ply

Bars (the issue's): (a) compressed val PSNR within 1 dB of the teacher's; (b) a 50k-Gaussian
.ply without data: >= 20x smaller than the PLY at >= 30 dB PSNR vs the teacher's renders on
held-out views, in under 20 minutes. The thresholds are options.

(a) evaluates the teacher and the decoded compressed file with the same renderer
(`Gaussians.render`, white background) on the dataset's val split, against its RGBA images
composited on white (what nerfstudio's blender dataparser does); the compressed scene's
nerfstudio evaluation (`ns-eval`'s numbers) is reported next to it. Prints a table; --json-out
writes every number. Each full measurement is 10-30 minutes of a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from neuralgs_ns.compress.pipeline_run import TeacherViews, dataset_views, psnr, sphere_cameras
from neuralgs_ns.compress.run import (CompressReport, compress, format_bytes, format_rows, format_seconds,
                                      format_stage_times, resolve_device)
from neuralgs_ns.gaussians import Gaussians, load_teacher, ply_size
from neuralgs_ns.utils import atomic_write_bytes

def sphere_views(gaussians: Gaussians, n: int, resolution: int = 256) -> List[tuple]:
    """(viewmat, K, width, height) of `n` cameras on a sphere around the scene's bulk, the
    cameras `compress` renders targets from when there is no dataset."""
    cameras = sphere_cameras(gaussians, n, TeacherViews(resolution=resolution))
    return [(viewmat, K, resolution, resolution) for _, viewmat, K in cameras]


@torch.no_grad()
def mean_psnr(gaussians: Gaussians, views: List[tuple], device: str) -> float:
    gaussians = gaussians.to(device)
    white = torch.ones(1, 3, device=device)
    values = []
    for viewmat, K, w, h, gt in views:
        image = gaussians.render(viewmat[None].to(device), K[None].to(device), w, h, backgrounds=white)[0][0]
        values.append(psnr(image.clamp(0, 1).cpu(), gt))
    return sum(values) / len(values)


def compress_kwargs(args) -> dict:
    return dict(preset=args.preset, device=args.device, fine_tune_iterations=args.fine_tune_iterations,
                fit_iterations=args.fit_iterations, run_dir=args.run_dir,
                model_options=dict(parse_model_option(o) for o in args.model_option))


def parse_model_option(option: str) -> tuple:
    """'name=value' -> (name, value), the value read as YAML (2500 -> int, 0.5 -> float)."""
    import yaml

    name, sep, value = option.partition("=")
    if not sep:
        raise SystemExit(f"--model-option {option!r}: expected NAME=VALUE")
    return name.strip().replace("-", "_"), yaml.safe_load(value)


def check(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def bench_teacher_with_data(args) -> dict:
    """(a): teacher and compressed val PSNR on the dataset, sizes, ratio, wall times."""
    from neuralgs_ns.codec import CompressedScene

    device = resolve_device(args.device)
    teacher = load_teacher(args.lego_teacher)
    val = dataset_views(args.data, args.split)
    t0 = time.perf_counter()
    teacher_psnr = mean_psnr(teacher, val, device)
    teacher_eval_s = time.perf_counter() - t0
    report = compress(args.lego_teacher, args.output, data=args.data, **compress_kwargs(args))
    t0 = time.perf_counter()
    compressed_psnr = mean_psnr(CompressedScene.load(report.output).decode(), val, device)
    compressed_eval_s = time.perf_counter() - t0
    delta = compressed_psnr - teacher_psnr
    bar = delta >= -args.max_psnr_drop
    rows = [
        ("", "Gaussians", "size", f"{args.split} PSNR", ""),
        ("teacher", f"{report.teacher_gaussians:,}", format_bytes(report.teacher_ply_bytes), f"{teacher_psnr:.2f} dB",
         "3DGS PLY"),
        ("compressed", f"{report.compressed_gaussians:,}", format_bytes(report.compressed_bytes),
         f"{compressed_psnr:.2f} dB", f"nerfstudio eval: {report.psnr:.2f} dB, SSIM {report.ssim:.4f}"),
        ("delta / ratio", "", f"{report.ratio:.1f}x", f"{delta:+.2f} dB",
         f"bar: within {args.max_psnr_drop:g} dB of the teacher: {check(bar)}"),
    ]
    stages = {"Teacher eval (bench)": teacher_eval_s, **report.stage_seconds}
    table = "\n\n".join([f"NeuralGS on {args.data} ({len(val)} {args.split} views), teacher {args.lego_teacher}",
                         format_rows(rows), format_stage_times(stages, report.total_seconds + teacher_eval_s)])
    return dict(mode="teacher+data", table=table, teacher_psnr=teacher_psnr, compressed_psnr=compressed_psnr,
                psnr_delta=delta, teacher_eval_seconds=teacher_eval_s, compressed_eval_seconds=compressed_eval_s,
                val_views=len(val), split=args.split, bar_within_db=args.max_psnr_drop, bar_pass=bool(bar),
                report=report.to_dict())


def bench_ply_without_data(args) -> dict:
    """(b): compress a .ply on teacher-rendered views; PSNR vs teacher renders, ratio, time."""
    views = TeacherViews(n_train=args.n_train_views, n_val=args.n_val_views, resolution=args.resolution)
    report: CompressReport = compress(args.ply, args.output, data=None, views=views, **compress_kwargs(args))
    ok_ratio = report.ratio >= args.min_ratio
    ok_psnr = report.psnr >= args.min_psnr
    ok_time = report.total_seconds <= args.max_minutes * 60
    rows = [
        ("", "Gaussians", "size", "held-out PSNR", ""),
        ("teacher .ply", f"{report.teacher_gaussians:,}", format_bytes(report.teacher_ply_bytes), "", str(args.ply)),
        ("compressed", f"{report.compressed_gaussians:,}", format_bytes(report.compressed_bytes), f"{report.psnr:.2f} dB",
         f"vs teacher renders, {report.eval_views} views, SSIM {report.ssim:.4f}"),
        ("ratio", "", f"{report.ratio:.1f}x", "", ""),
    ]
    bars = format_rows([
        ("bar", "target", "measured", ""),
        ("ratio", f">= {args.min_ratio:g}x", f"{report.ratio:.1f}x", check(ok_ratio)),
        ("PSNR vs teacher renders", f">= {args.min_psnr:g} dB", f"{report.psnr:.2f} dB", check(ok_psnr)),
        ("wall time", f"<= {args.max_minutes:g} min", format_seconds(report.total_seconds), check(ok_time)),
    ])
    table = "\n\n".join([f"NeuralGS on {args.ply} without data ({views.n_train} + {views.n_val} rendered views at "
                         f"{views.resolution}x{views.resolution})", format_rows(rows), bars,
                         format_stage_times(report.stage_seconds, report.total_seconds)])
    return dict(mode="ply", table=table, bar_min_ratio=args.min_ratio, bar_min_psnr=args.min_psnr,
                bar_max_minutes=args.max_minutes, bar_pass=bool(ok_ratio and ok_psnr and ok_time),
                report=report.to_dict())


def make_ply(args) -> dict:
    """The `--gaussians` most important Gaussians of a teacher (stage A's score over views of
    the dataset with --data, else over views on a sphere around it) as a 3DGS .ply."""
    from neuralgs_ns.compress.importance import importance_scores
    from neuralgs_ns.gaussians import write_ply
    from neuralgs_ns.progress import progress_bar

    device = resolve_device(args.device)
    teacher = load_teacher(args.make_ply_from)
    if len(teacher) <= args.gaussians:
        raise SystemExit(f"{args.make_ply_from} holds {len(teacher)} Gaussians, not more than --gaussians {args.gaussians}")
    t0 = time.perf_counter()
    if args.data is not None:
        views = [v[:4] for v in dataset_views(args.data, "train")]
    else:
        views = sphere_views(teacher, args.n_train_views, args.resolution)
    views = [(vm.to(device), K.to(device), w, h) for vm, K, w, h in views]
    with progress_bar("importance", len(views)) as advance:
        scores = importance_scores(teacher.to(device), views, beta=0.1, progress=advance).cpu()
    keep = torch.topk(scores, args.gaussians).indices.sort().values
    subset = teacher.subset(keep)
    write_ply(subset, args.out)
    seconds = time.perf_counter() - t0
    table = format_rows([
        ("", "Gaussians", "size", ""),
        ("teacher", f"{len(teacher):,}", format_bytes(ply_size(teacher)), str(args.make_ply_from)),
        ("written", f"{len(subset):,}", format_bytes(ply_size(subset)),
         f"{args.out} (top by importance over {len(views)} views, {format_seconds(seconds)})"),
    ])
    return dict(mode="make-ply", table=table, teacher_gaussians=len(teacher), gaussians=len(subset),
                ply_bytes=ply_size(subset), views=len(views), seconds=seconds, out=str(args.out))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--lego-teacher", type=Path, help="(a) a splatfacto teacher (.ckpt, run dir, config.yml); needs --data")
    mode.add_argument("--ply", type=Path, help="(b) a 3DGS .ply to compress without data")
    mode.add_argument("--make-ply-from", type=Path, help="write the --gaussians most important Gaussians of a teacher to --out")
    parser.add_argument("--data", type=Path, help="the teacher's dataset (a); views for --make-ply-from's importance")
    parser.add_argument("--split", default="val", help="(a) held-out split of --data (default val)")
    parser.add_argument("--output", type=Path, help="compressed file (default: RUN_DIR/bench.ngs)")
    parser.add_argument("--run-dir", type=Path, default=Path("neuralgs-bench"), help="nerfstudio runs (default neuralgs-bench)")
    parser.add_argument("--preset", default="cpu", choices=["auto", "neuralgs", "cpu"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--fit-iterations", type=int, help="stage C steps (default: the preset's)")
    parser.add_argument("--fine-tune-iterations", type=int, help="stage D steps (default: the preset's)")
    parser.add_argument("--model-option", action="append", default=[], metavar="NAME=VALUE",
                        help="a NeuralGSModelConfig field, e.g. target_cluster_size=2500 (repeatable)")
    parser.add_argument("--n-train-views", type=int, default=TeacherViews.n_train, help="(b) rendered training views")
    parser.add_argument("--n-val-views", type=int, default=TeacherViews.n_val, help="(b) rendered held-out views")
    parser.add_argument("--resolution", type=int, default=TeacherViews.resolution, help="(b) rendered view size")
    parser.add_argument("--gaussians", type=int, default=50000, help="--make-ply-from: Gaussians to keep")
    parser.add_argument("--out", type=Path, help="--make-ply-from: the .ply to write")
    parser.add_argument("--max-psnr-drop", type=float, default=1.0, help="(a) bar: dB below the teacher")
    parser.add_argument("--min-ratio", type=float, default=20.0, help="(b) bar: PLY bytes / compressed bytes")
    parser.add_argument("--min-psnr", type=float, default=30.0, help="(b) bar: dB vs the teacher's renders")
    parser.add_argument("--max-minutes", type=float, default=20.0, help="(b) bar: wall time of compress")
    parser.add_argument("--json-out", type=Path, help="write every number here")
    args = parser.parse_args(argv)
    if args.lego_teacher is not None and args.data is None:
        parser.error("--lego-teacher needs --data")
    if args.make_ply_from is not None and args.out is None:
        parser.error("--make-ply-from needs --out")
    if args.output is None:
        args.output = args.run_dir / "bench.ngs"
    return args


def main(argv: Optional[List[str]] = None) -> Dict:
    args = parse_args(argv)
    if args.make_ply_from is None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.lego_teacher is not None:
        result = bench_teacher_with_data(args)
    elif args.ply is not None:
        result = bench_ply_without_data(args)
    else:
        result = make_ply(args)
    result["machine"] = dict(platform=platform.platform(), cpus=os.cpu_count(), torch=torch.__version__,
                             threads=torch.get_num_threads(), cuda=torch.cuda.is_available(),
                             date=time.strftime("%Y-%m-%d %H:%M:%S"))
    result["argv"] = sys.argv[1:] if argv is None else list(argv)
    print()
    print(result["table"])
    if args.json_out is not None:
        atomic_write_bytes(args.json_out, (json.dumps(result, indent=2, default=str) + "\n").encode())
        print(f"\nwrote {args.json_out}")
    return result


if __name__ == "__main__":
    main()

"""What pruning alone costs: the teacher with its least important Gaussians removed (stage A's
importance over the training views), rendered on the held-out views, at several fractions.

    python benchmarks/bench_pruning.py outputs/lego/splatfacto-portable/<timestamp> --data lego-200
    python benchmarks/bench_pruning.py scene.ply            # against the teacher's own renders

Nothing is fitted: the pruned teacher is the ceiling every later stage works under (positions
are frozen after stage B, so fine-tuning cannot bring a pruned Gaussian back). With --data the
PSNR is against the dataset's held-out images, so the unpruned row is the teacher's own score;
without it, against the teacher's renders of `TeacherViews`' held-out views. The last column is
what the compressor itself can see: the pruned teacher against the full teacher's renders of 8
training views (the views `neuralgs compress` checks its per-scene choices on). Prints a table;
--json-out writes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_neuralgs import mean_psnr  # noqa: E402

from neuralgs_ns.compress.importance import importance_scores, prune_mask  # noqa: E402
from neuralgs_ns.compress.pipeline_run import (TeacherViews, dataset_views, frame_check_indices,  # noqa: E402
                                               held_out_mask, sphere_cameras)
from neuralgs_ns.compress.rate import mean_psnr_against, render_views  # noqa: E402
from neuralgs_ns.compress.run import format_rows  # noqa: E402
from neuralgs_ns.formats import load_teacher  # noqa: E402
from neuralgs_ns.progress import progress_bar  # noqa: E402
from neuralgs_ns.utils import atomic_write_bytes  # noqa: E402

WHITE = torch.ones(1, 3)


def teacher_sphere_views(teacher, config: TeacherViews, held_out: bool) -> List[tuple]:
    """The training or held-out views `neuralgs compress` renders from a teacher without data;
    held-out ones with the teacher's render (on white) as their image."""
    cameras = sphere_cameras(teacher, config.n_train + config.n_val, config)
    size = config.resolution

    def render(viewmat, K) -> torch.Tensor:
        return teacher.render(viewmat[None], K[None], size, size, backgrounds=WHITE)[0][0].clamp(0, 1)

    return [(viewmat, K, size, size, render(viewmat, K) if held_out else None)
            for (_, viewmat, K), is_val in zip(cameras, held_out_mask(config)) if is_val == held_out]


def main(argv: Optional[List[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("teacher", type=Path, help="a 3DGS .ply, a splatfacto .ckpt, its run directory or config.yml")
    parser.add_argument("--data", type=Path, help="the teacher's dataset: importance over its train split, PSNR on val")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    parser.add_argument("--beta", type=float, default=0.1, help="importance's volume exponent (the model's default)")
    parser.add_argument("--n-train-views", type=int, default=TeacherViews.n_train, help="(no data) importance views")
    parser.add_argument("--n-val-views", type=int, default=TeacherViews.n_val, help="(no data) held-out views")
    parser.add_argument("--resolution", type=int, default=TeacherViews.resolution, help="(no data) view size")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    teacher = load_teacher(args.teacher)
    if args.data is not None:
        train = [v[:4] for v in dataset_views(args.data, "train")]
        held_out = dataset_views(args.data, "val")
    else:
        config = TeacherViews(n_train=args.n_train_views, n_val=args.n_val_views, resolution=args.resolution)
        train = [v[:4] for v in teacher_sphere_views(teacher, config, held_out=False)]
        held_out = teacher_sphere_views(teacher, config, held_out=True)
    with progress_bar("importance over training views", len(train)) as advance:
        scores = importance_scores(teacher, train, beta=args.beta, progress=advance)
    checked = [train[i] for i in frame_check_indices(len(train), 8)]
    exact = render_views(teacher, checked)
    rows, table = [("pruned", "Gaussians", "PSNR", "vs unpruned", "train views vs teacher")], []
    with progress_bar("pruned teachers", len(args.fractions)) as advance:
        for fraction in args.fractions:
            kept = teacher.subset(prune_mask(scores, fraction))
            value = mean_psnr(kept, held_out, "cpu")
            seen = mean_psnr_against(kept, checked, exact) if len(kept) < len(teacher) else None
            table.append({"fraction": fraction, "gaussians": len(kept), "psnr": value, "train_psnr_vs_teacher": seen})
            advance()
    reference = table[0]["psnr"]
    rows += [(f"{r['fraction']:.0%}", f"{r['gaussians']:,}", f"{r['psnr']:.2f}", f"{r['psnr'] - reference:+.2f}",
              "lossless" if r["train_psnr_vs_teacher"] is None else f"{r['train_psnr_vs_teacher']:.2f}") for r in table]
    against = "the dataset's val images" if args.data is not None else "the teacher's renders"
    print(f"\n{args.teacher}: {len(teacher):,} Gaussians, SH degree {teacher.sh_degree}; held-out PSNR against "
          f"{against} ({time.perf_counter() - start:.0f} s)\n" + format_rows(rows))
    out = {"teacher": str(args.teacher), "data": None if args.data is None else str(args.data), "against": against,
           "beta": args.beta, "rows": table}
    if args.json_out is not None:
        atomic_write_bytes(args.json_out, (json.dumps(out, indent=2) + "\n").encode())
    return out


if __name__ == "__main__":
    main()

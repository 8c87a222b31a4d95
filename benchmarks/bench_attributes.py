"""Where the decibels go: the PSNR each attribute group costs after stage C and after stage D.

    # a splatfacto teacher with its dataset: PSNR against the dataset's val images
    python benchmarks/bench_attributes.py outputs/lego/splatfacto-portable/<timestamp> --data lego-200
    # a plain .ply without data: PSNR against the teacher's renders of held-out views
    python benchmarks/bench_attributes.py scene-sh0.ply

One `compress()` run; after stage C and again after stage D the decoded scene is rendered on
the held-out views with one attribute group (opacity, scales, rotations, dc colour, sh_rest)
put back to the pruned teacher's values, everything else as decoded, and the other way round
(only that group decoded, the rest the teacher's). Positions are on the file's grid in every
render, so "all restored" is the pruned teacher snapped to the grid: the ceiling of what the
MLPs could reach. The gain of a group is what storing it exactly would buy; the cost alone is
what it loses by itself. Prints a table; --json-out writes every number. Extra compress
options (--model-option NAME=VALUE) test variants.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_neuralgs import parse_model_option  # noqa: E402

from neuralgs_ns.compress.clustering import (NormalizationTable, attribute_groups,  # noqa: E402
                                             gaussians_from_attributes)
from neuralgs_ns.compress.pipeline_run import TeacherViews, dataset_views, psnr  # noqa: E402
from neuralgs_ns.codec.residuals import ResidualTable  # noqa: E402
from neuralgs_ns.compress.run import compress, format_rows  # noqa: E402
from neuralgs_ns.utils import atomic_write_bytes  # noqa: E402


@torch.no_grad()
def group_table(model, views: List[tuple], steps: Sequence[float] = ()) -> dict:
    """PSNR of the decoded scene, of the pruned teacher on the grid, and of each group swapped
    in either direction, over `views` (viewmat, K, width, height, image on white); for each of
    `steps`, the PSNR and bits per Gaussian of correcting the group at that step."""
    table = NormalizationTable(model.attribute_mins, model.attribute_maxs)
    decoded = model.normalized_attributes()
    teacher = model.fit_targets.to(decoded.device)
    white = torch.ones(1, 3, device=decoded.device)

    def score(normalized) -> float:
        g = gaussians_from_attributes(model.positions, table.denormalize(normalized), model.config.sh_degree)
        values = [psnr(g.render(vm[None].to(g.means.device), K[None].to(g.means.device), w, h, backgrounds=white)[0][0]
                       .clamp(0, 1).cpu(), image) for vm, K, w, h, image in views]
        return sum(values) / len(values)

    out = {"decoded": score(decoded), "teacher on grid": score(teacher), "groups": {}}
    for name, cols in attribute_groups(model.config.sh_degree).items():
        restored = decoded.clone()
        restored[:, cols] = teacher[:, cols]
        alone = teacher.clone()
        alone[:, cols] = decoded[:, cols]
        out["groups"][name] = {"restored": score(restored), "alone": score(alone), "residuals": {}}
        for step in steps:
            # What a correction of this group at this step would start stage D with, and its cost.
            codes = torch.round((teacher[:, cols] - decoded[:, cols]) / step)
            corrected = decoded.clone()
            corrected[:, cols] += codes * step
            n_columns = cols.stop - cols.start
            bits = ResidualTable.fit(codes.long().cpu().numpy(), list(range(n_columns)),
                                     [step] * n_columns).ideal_bits(codes.long().cpu().numpy())
            out["groups"][name]["residuals"][step] = {"psnr": score(corrected), "bits_per_gaussian": bits / len(codes)}
    return out


def format_table(stage: str, result: dict) -> str:
    rows = [(stage, "PSNR", "gain", "only it decoded", "cost alone"),
            ("decoded (everything from the MLPs)", f"{result['decoded']:.2f}", "", "", ""),
            ("pruned teacher on the grid", f"{result['teacher on grid']:.2f}",
             f"{result['teacher on grid'] - result['decoded']:+.2f}", "", "")]
    for name, r in result["groups"].items():
        rows.append((f"{name} restored", f"{r['restored']:.2f}", f"{r['restored'] - result['decoded']:+.2f}",
                     f"{r['alone']:.2f}", f"{r['alone'] - result['teacher on grid']:+.2f}"))
    text = format_rows(rows)
    corrections = [(name, step, v) for name, r in result["groups"].items() for step, v in r["residuals"].items()]
    if corrections:
        rows = [("corrected at step", "step", "PSNR", "gain", "bits/Gaussian", "dB per bit/G")]
        rows += [(name, f"{step:g}", f"{v['psnr']:.2f}", f"{v['psnr'] - result['decoded']:+.2f}",
                  f"{v['bits_per_gaussian']:.2f}",
                  f"{(v['psnr'] - result['decoded']) / max(v['bits_per_gaussian'], 1e-9):.3f}")
                 for name, step, v in corrections]
        text += "\n\n" + format_rows(rows)
    return text


def main(argv: Optional[List[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("teacher", type=Path, help="a 3DGS .ply, a splatfacto .ckpt, its run directory or config.yml")
    parser.add_argument("--data", type=Path, help="the teacher's dataset (held-out views: its val split)")
    parser.add_argument("--run-dir", type=Path, default=Path("neuralgs-bench-attributes"))
    parser.add_argument("--preset", default="cpu", choices=["auto", "neuralgs", "cpu"])
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fit-iterations", type=int)
    parser.add_argument("--fine-tune-iterations", type=int)
    parser.add_argument("--target-size", help="compress --target-size (default: the preset's rate)")
    parser.add_argument("--model-option", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--steps", type=float, nargs="*", default=[0.01, 0.02, 0.05, 0.1],
                        help="after stage C: correction steps to price per group (normalised units)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    args.run_dir.mkdir(parents=True, exist_ok=True)

    results: Dict[str, dict] = {}

    def inspect(stage: str, pipeline) -> None:
        model = pipeline.model
        was_training = model.training
        model.eval()
        start = time.perf_counter()
        views = dataset_views(Path(pipeline.datamanager.config.data), "val")
        results[stage] = group_table(model, views, args.steps if stage == "stage C" else ())
        results[stage]["seconds"] = time.perf_counter() - start
        print(format_table(stage, results[stage]), flush=True)
        model.train(was_training)

    options = dict(parse_model_option(o) for o in args.model_option)
    options["seed"] = args.seed
    report = compress(args.teacher, args.run_dir / "attributes.ngs", data=args.data, preset=args.preset,
                      device=args.device, fine_tune_iterations=args.fine_tune_iterations,
                      fit_iterations=args.fit_iterations, run_dir=args.run_dir, views=TeacherViews(),
                      model_options=options, inspect=inspect, target_size=args.target_size)
    against = "the dataset's val images" if args.data is not None else "the teacher's renders"
    print(f"\n{args.teacher}: {report.compressed_gaussians:,} Gaussians, {report.compressed_bytes:,} B "
          f"({report.ratio:.1f}x), PSNR against {against}, seed {args.seed}\n")
    for stage in ("stage C", "stage D"):
        print(format_table(stage, results[stage]) + "\n")
    out = {"teacher": str(args.teacher), "data": None if args.data is None else str(args.data), "seed": args.seed,
           "target_size": args.target_size,
           "model_options": options, "against": against, "stages": results, "report": report.to_dict()}
    if args.json_out is not None:
        atomic_write_bytes(args.json_out, (json.dumps(out, indent=2, default=str) + "\n").encode())
    return out


if __name__ == "__main__":
    main()

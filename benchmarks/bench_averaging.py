"""Weight averaging at the end of stage D, paired: what the mean of the last steps' weights
gains over the last step's, on the same runs.

    python benchmarks/bench_averaging.py outputs/lego/splatfacto-portable/<timestamp> --data lego-200 --seeds 0 1 2
    python benchmarks/bench_averaging.py TEACHER --data DIR --fractions 0.1 0.2 --fine-tune-iterations 4500

One `compress` run per seed with averaging off (`average_fraction` 0, whatever the preset
says), so the file holds the last step's weights. Beside the run, read-only, a callback keeps
running means of the MLP weights and corrections over the last `--fractions` of the steps;
after the run each mean is put in the model, written through the same file path and scored on
the dataset's val views. The trajectory is the run's own, so each difference is the averaging
alone, free of the seed-to-seed chaos of stage D. Prints a table; --json-out writes every number.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation

sys.path.insert(0, str(Path(__file__).parent))
from bench_neuralgs import parse_model_option, view_psnrs  # noqa: E402

from neuralgs_ns.codec import CompressedScene  # noqa: E402
from neuralgs_ns.compress.averaging import TrailingMean  # noqa: E402
from neuralgs_ns.compress.pipeline_run import dataset_views  # noqa: E402
from neuralgs_ns.compress.run import compress, format_rows  # noqa: E402
from neuralgs_ns.models.neuralgs import NeuralGSModel  # noqa: E402
from neuralgs_ns.utils import atomic_write_bytes  # noqa: E402


class RunningMeans:
    """A `TrailingMean` of the model's trained tensors for each fraction, read-only beside a run."""

    def __init__(self, fractions: List[float]):
        self.fractions = fractions
        self.windows: Dict[float, TrailingMean] = {}

    def callbacks(self, model, trainer) -> List[TrainingCallback]:
        total = trainer.config.max_num_iterations
        self.windows = {f: TrailingMean(f, total) for f in self.fractions}

        def track(step: int) -> None:
            for window in self.windows.values():
                window.update(step, trainer._start_step + total - 1, model.trained_tensors())

        return [TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], track)]


@torch.no_grad()
def scores_of_means(model, means: RunningMeans, val: List[tuple]) -> Dict[float, List[float]]:
    """Per-view PSNRs of the model with each running mean in place of its weights (the model
    is left as it was)."""
    saved = [t.detach().clone() for t in model.trained_tensors()]
    scores = {}
    for f, window in means.windows.items():
        if window.mean is None:  # a window of no steps (fraction * steps rounds to 0)
            continue
        for t, v in zip(model.trained_tensors(), window.mean):
            t.copy_(v)
        model._field_version += 1  # the decode cache keys on it
        scores[f] = view_psnrs(CompressedScene.from_model(model).decode(), val, "cpu")
    for t, v in zip(model.trained_tensors(), saved):
        t.copy_(v)
    model._field_version += 1
    return scores


def main(argv: Optional[List[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("teacher", type=Path, help="a splatfacto teacher (.ckpt, run dir, config.yml)")
    parser.add_argument("--data", type=Path, required=True, help="its dataset (val split: the held-out views)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--run-dir", type=Path, default=Path("neuralgs-bench-averaging"))
    parser.add_argument("--preset", default="cpu", choices=["auto", "neuralgs", "cpu"])
    parser.add_argument("--fit-iterations", type=int)
    parser.add_argument("--fine-tune-iterations", type=int)
    parser.add_argument("--model-option", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)

    means = RunningMeans(args.fractions)
    original = NeuralGSModel.get_training_callbacks

    def with_means(self, attributes):
        return original(self, attributes) + means.callbacks(self, attributes.trainer)

    val = dataset_views(args.data, "val")
    options = {**dict(parse_model_option(o) for o in args.model_option), "average_fraction": 0.0}
    args.run_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in args.seeds:
        averaged = {}

        def inspect(stage, pipeline):
            if stage == "stage D":
                averaged.update(scores_of_means(pipeline.model, means, val))

        NeuralGSModel.get_training_callbacks = with_means
        try:
            report = compress(args.teacher, args.run_dir / f"seed{seed}.ngs", data=args.data, preset=args.preset,
                              device="cpu", fit_iterations=args.fit_iterations,
                              fine_tune_iterations=args.fine_tune_iterations, run_dir=args.run_dir, inspect=inspect,
                              model_options={**options, "seed": seed})
        finally:
            NeuralGSModel.get_training_callbacks = original
        last = view_psnrs(CompressedScene.load(report.output).decode(), val, "cpu")
        runs.append(dict(seed=seed, bytes=report.compressed_bytes, ratio=report.ratio, seconds=report.total_seconds,
                         last=dict(psnr=statistics.mean(last), view_psnrs=last),
                         averaged={str(f): dict(psnr=statistics.mean(v), view_psnrs=v) for f, v in averaged.items()}))

    header = ("seed", "last step") + tuple(f"mean of the last {f:.0%}" for f in args.fractions)
    rows = [header]
    for r in runs:
        base = r["last"]["psnr"]
        rows.append((str(r["seed"]), f"{base:.2f} dB") + tuple(
            f"{r['averaged'][str(f)]['psnr']:.2f} dB ({r['averaged'][str(f)]['psnr'] - base:+.2f})"
            if str(f) in r["averaged"] else "-" for f in args.fractions))
    table = (f"{args.teacher} on {args.data} ({len(val)} val views), PSNR against the val images\n\n"
             + format_rows(rows))
    print(table)
    result = dict(teacher=str(args.teacher), data=str(args.data), table=table, runs=runs, argv=list(argv or sys.argv[1:]))
    if args.json_out is not None:
        atomic_write_bytes(args.json_out, (json.dumps(result, indent=2) + "\n").encode())
    return result


if __name__ == "__main__":
    main()

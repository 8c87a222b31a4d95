"""One rate-distortion plot from a `neuralgs bench` run and compress runs made outside it.

A bench run is one NeuralGS run per rate point; runs over several seeds (bench_neuralgs.py) or
with model options (bench_attributes.py) happen elsewhere. This adds them to the bench's rows
as extra points and draws the bench's own plot (`bench.rd_plot_png`) and table again:

    python benchmarks/plot_rd.py bench-sh0/results.json --out sh0-rd.png \\
        --point neuralgs=attributes-default.json --point neuralgs@110KB=seeds.json ...

Each --point is NAME=JSON: a bench_attributes.py --json-out file (one run), or a
bench_neuralgs.py --json-out file (its seeds; the point is their mean size and PSNR, and the
JSON's runs are listed). Names starting with 'neuralgs' join the NeuralGS curve; others are
single markers. Points are PSNR against what the bench scored (the teacher's renders without
--data), so only runs on the same views belong together.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import List, Optional

from neuralgs_ns.bench import BenchResult, BenchRow, rd_plot_png
from neuralgs_ns.compress.run import format_rows
from neuralgs_ns.utils import atomic_write_bytes


def load_result(path: Path) -> BenchResult:
    d = json.loads(path.read_text())
    rows = [BenchRow(**row) for row in d.pop("rows")]
    return BenchResult(**{**d, "teacher": Path(d["teacher"]), "targets": Path(d["targets"]),
                          "image_size": tuple(d["image_size"]), "rows": rows})


def runs_of(path: Path) -> List[dict]:
    """(bytes, psnr, seed) of every run in a bench_attributes or bench_neuralgs JSON."""
    d = json.loads(path.read_text())
    if "runs" in d:
        return [dict(bytes=r["bytes"], psnr=r["psnr"], seed=r["seed"]) for r in d["runs"]]
    return [dict(bytes=d["report"]["compressed_bytes"], psnr=d["report"]["psnr"], seed=d.get("seed"))]


def point_row(name: str, runs: List[dict], teacher_bytes: int, has_ground_truth: bool) -> BenchRow:
    size = round(statistics.mean(r["bytes"] for r in runs))
    psnr = statistics.mean(r["psnr"] for r in runs)
    seeds = ", ".join(str(r["seed"]) for r in runs)
    row = BenchRow(method=name, description=f"outside the bench, seeds {seeds}", bytes=size,
                   ratio=teacher_bytes / size)
    if has_ground_truth:
        row.psnr_gt = psnr
    else:
        row.psnr_teacher = psnr
    return row


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a neuralgs bench results.json")
    parser.add_argument("--point", action="append", default=[], metavar="NAME=JSON[,JSON...]",
                        help="runs made outside the bench: one point, their mean")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    result = load_result(args.results)
    table = [("point", "runs", "size", "ratio", "PSNR (mean)", "spread")]
    for point in args.point:
        name, _, paths = point.partition("=")
        runs = [run for p in paths.split(",") for run in runs_of(Path(p))]
        row = point_row(name, runs, result.teacher_bytes, result.has_ground_truth)
        result.rows.append(row)
        psnrs = [r["psnr"] for r in runs]
        table.append((name, str(len(runs)), f"{row.bytes:,} B", f"{row.ratio:.1f}x", f"{row.psnr:.2f} dB",
                      f"{max(psnrs) - min(psnrs):.2f} dB"))
    atomic_write_bytes(args.out, rd_plot_png(result))
    print(format_rows(table))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

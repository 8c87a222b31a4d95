"""Times `neuralgs_ns.formats.write_gaussians` on a large random scene: seconds and bytes to
write each format it writes (.ply, .spz, .splat, .sog).

    python benchmarks/bench_export.py                 # 1M Gaussians, SH degree 3
    python benchmarks/bench_export.py --n 200000 --repeats 3

Values are random but of trained-scene magnitudes (SH rest ~0.05, log scales around -4.5).
SPZ time is mostly its compressor's and depends on the data: noisier SH compresses slower;
SOG's is mostly the k-means of its SH palette.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from neuralgs_ns.formats import EXPORT_FORMATS, write_gaussians
from neuralgs_ns.gaussians import Gaussians


def random_scene(n: int, degree: int = 3, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2 - 1
    return Gaussians(
        means=torch.randn(n, 3, generator=g) * 3,
        scales=torch.randn(n, 3, generator=g) * 0.5 - 4.5,
        quats=torch.randn(n, 4, generator=g),
        opacities=torch.randn(n, 1, generator=g) * 2,
        features_dc=torch.randn(n, 3, generator=g) * 0.8,
        features_rest=torch.randn(n, k, 3, generator=g) * 0.05,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="number of Gaussians")
    parser.add_argument("--degree", type=int, default=3, help="SH degree")
    parser.add_argument("--repeats", type=int, default=1, help="writes per format; the best is shown")
    args = parser.parse_args()

    scene = random_scene(args.n, args.degree)
    print(f"{args.n:,} Gaussians, SH degree {args.degree}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"{'format':<8}{'bytes':>15}{'MiB':>10}{'seconds':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in EXPORT_FORMATS:
            path = Path(tmp) / f"scene{suffix}"
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                write_gaussians(scene, path)
                best = min(best, time.perf_counter() - start)
            size = path.stat().st_size
            print(f"{suffix:<8}{size:>15,}{size / 2**20:>10.1f}{best:>10.2f}")
            path.unlink()


if __name__ == "__main__":
    main()

"""Times `neuralgs_ns.render.rasterize` on CPU: forward and forward+backward milliseconds.

    python benchmarks/bench_rasterize.py            # the issue's two sizes + a dense-comparable one
    python benchmarks/bench_rasterize.py --sizes 50000x256 --repeats 20
    python benchmarks/bench_rasterize.py --sizes 50000x256:faint   # a real capture's overdraw

Prints one row per scene size: median and best wall time over the repeats, Gaussians drawn,
tile intersections, and the speed-up over the dense reference renderer where its
[pixels x Gaussians] working set fits in memory (otherwise "n/a" and the estimate).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time

import torch

from neuralgs_ns.render import rasterize

DENSE_BUDGET_BYTES = 4 << 30  # skip the dense reference above this working set


def random_scene(n: int, size: int, seed: int = 0, kind: str = "random"):
    """n Gaussians in a cube 4 units in front of a 60-degree pinhole camera, random rotations
    and colours. "random": log-uniform scales (about 0.5 to 8 pixels on screen at 256 px),
    opacities uniform in [0.05, 0.95]. "faint": a real capture's overdraw, which random scenes
    flatter: scales up to 5 times larger, overlapping, and log-normal opacities of median 0.06
    (what a 9k-Gaussian real capture had), some too faint to reach 1/255 anywhere."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * 2.0
    quats = torch.randn(n, 4, generator=g)
    top = 0.03 if kind == "random" else 0.15
    log_scale = torch.empty(n, 3).uniform_(math.log(0.002), math.log(top), generator=g)
    scales = log_scale.exp()
    if kind == "random":
        opacities = torch.rand(n, generator=g) * 0.9 + 0.05
    else:
        opacities = (math.log(0.06) + 1.2 * torch.randn(n, generator=g)).exp().clamp(max=0.99)
    colors = torch.rand(n, 3, generator=g)
    viewmat = torch.eye(4)
    viewmat[2, 3] = 4.0
    f = 0.5 * size / math.tan(math.radians(30))
    K = torch.tensor([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]])
    return (means, quats, scales, opacities, colors), viewmat[None], K[None]


def time_once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def bench(render_fn, params, viewmats, Ks, size, repeats):
    leaves = [p.clone().requires_grad_(True) for p in params]

    def forward():
        with torch.no_grad():
            render_fn(*leaves, viewmats, Ks, size, size)

    def forward_backward():
        renders, alphas, _ = render_fn(*leaves, viewmats, Ks, size, size)
        (renders.sum() + alphas.sum()).backward()

    forward()  # JIT compilation and caches
    forward_backward()
    fwd = [time_once(forward) for _ in range(repeats)]
    fwd_bwd = [time_once(forward_backward) for _ in range(repeats)]
    return fwd, fwd_bwd


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["2000x64", "50000x256", "200000x512"],
                        help="scenes as GAUSSIANSxPIXELS (square images), :faint for a real capture's overdraw")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    from neuralgs_ns.render.reference import render_dense

    print(f"# CPU rasteriser benchmark: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} torch threads")
    print(f"{'scene':>16} {'drawn':>8} {'fwd ms (med/min)':>18} {'fwd+bwd ms (med/min)':>22} "
          f"{'dense fwd+bwd ms':>17} {'speed-up':>9}")
    for spec in args.sizes:
        dims, _, kind = spec.lower().partition(":")
        if kind not in ("", "random", "faint"):
            parser.error(f"unknown scene kind {kind!r} in {spec} (random or faint)")
        n, size = (int(v) for v in dims.split("x"))
        params, viewmats, Ks = random_scene(n, size, kind=kind or "random")
        with torch.no_grad():
            _, _, info = rasterize(*params, viewmats, Ks, size, size)
        drawn = int((info["radii"] > 0).sum())
        fwd, fwd_bwd = bench(rasterize, params, viewmats, Ks, size, args.repeats)
        # The dense renderer holds several [H*W, N] float tensors for autograd.
        dense_bytes = 12 * 4 * size * size * n
        if dense_bytes <= DENSE_BUDGET_BYTES:
            _, dense = bench(render_dense, params, viewmats, Ks, size, max(1, min(3, args.repeats)))
            dense_ms = statistics.median(dense)
            dense_txt, speed = f"{dense_ms:.0f}", f"{dense_ms / statistics.median(fwd_bwd):.0f}x"
        else:
            dense_txt, speed = f"n/a (~{dense_bytes / 2**30:.0f} GiB)", "n/a"
        print(f"{spec:>16} {drawn:>8} {statistics.median(fwd):>9.1f} / {min(fwd):<6.1f} "
              f"{statistics.median(fwd_bwd):>11.1f} / {min(fwd_bwd):<8.1f} {dense_txt:>17} {speed:>9}")


if __name__ == "__main__":
    main()

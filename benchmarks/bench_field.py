"""Times the per-cluster MLPs the way stage D runs them: decode every kept Gaussian, then
backward, on CPU. On lego-200 this is most of a fine-tune step (the rasteriser is the rest).

    python benchmarks/bench_field.py                       # lego-200's plan: 118,528 points, 24 MLPs of 4 x 80
    python benchmarks/bench_field.py --points 17648 --clusters 7 --width 57   # the demo scene's
    python benchmarks/bench_field.py --activation-only     # tanh kernels alone

Prints the median forward and backward milliseconds over the repeats, and the same with torch's
own tanh kernel in place of `field.fast_tanh` (the activation stage C and D use on CPU).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Callable, Tuple

import torch

from neuralgs_ns.compress.field import ClusteredMLPField, FieldConfig, fast_tanh


def time_steps(fn: Callable[[], Tuple[float, float]], repeats: int) -> Tuple[float, float]:
    fn()  # warm-up: allocator and kernel dispatch
    times = [fn() for _ in range(repeats)]
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def decode_step(args, activation: Callable) -> Callable[[], Tuple[float, float]]:
    g = torch.Generator().manual_seed(0)
    positions = torch.rand(args.points, 3, generator=g)
    # k-means clusters are uneven: sizes from half to 1.5x the mean
    labels = torch.multinomial(torch.linspace(0.5, 1.5, args.clusters), args.points, replacement=True, generator=g)
    config = FieldConfig(n_frequencies=args.frequencies, width=args.width, depth=args.depth, weight_precision="int8")
    mlp = ClusteredMLPField.from_points(config, positions, labels, args.out_dim, n_clusters=args.clusters)
    mlp.int8_active = False  # stage D's precision before its quantisation-aware steps
    mlp._activation = activation
    upstream = torch.randn(args.points, args.out_dim, generator=g)

    def step() -> Tuple[float, float]:
        t0 = time.perf_counter()
        out = mlp.decode(positions, labels)
        t1 = time.perf_counter()
        (out * upstream).sum().backward()
        t2 = time.perf_counter()
        mlp.zero_grad(set_to_none=True)
        return (t1 - t0) * 1e3, (t2 - t1) * 1e3

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=118_528)
    parser.add_argument("--clusters", type=int, default=24)
    parser.add_argument("--width", type=int, default=80)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--frequencies", type=int, default=6)
    parser.add_argument("--out-dim", type=int, default=56, help="attributes per Gaussian (56 at SH degree 3)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--activation-only", action="store_true", help="time the tanh kernels alone")
    args = parser.parse_args()
    print(f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")

    if args.activation_only:
        x = torch.randn(args.clusters, -(-8192 // args.clusters), args.width)  # one decode block
        for name, fn in (("torch.tanh", torch.tanh), ("fast_tanh", fast_tanh)):
            milliseconds, _ = time_steps(lambda: (_time(lambda: fn(x)), 0.0), 20 * args.repeats)
            print(f"{name:>10}: {milliseconds * 1e3:6.0f} us per [{', '.join(map(str, x.shape))}] block")
        return

    print(f"{args.points:,} points, {args.clusters} MLPs of {args.depth} x {args.width}, "
          f"{args.frequencies} frequencies, {args.out_dim} outputs; median of {args.repeats}")
    for name, activation in (("fast_tanh", fast_tanh), ("torch.tanh", torch.tanh)):
        forward, backward = time_steps(decode_step(args, activation), args.repeats)
        print(f"{name:>10}: forward {forward:6.0f} ms, backward {backward:6.0f} ms, total {forward + backward:6.0f} ms")


def _time(fn: Callable) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


if __name__ == "__main__":
    main()

"""Encode and decode speed of the .ngs bitstream at scale (default: 1M Gaussians).

    python benchmarks/bench_codec.py [--gaussians 1000000] [--preset cpu|neuralgs] [--file F.ngs]

Builds a synthetic compressed scene (points on the surfaces of a few spheres, the way
splats hug surfaces; clusters of the preset's target size, largest first; MLPs of the
preset's shape with random weights) and times, on CPU:
  encode         CompressedScene -> bytes (position entropy coding, weight quantisation)
  parse          bytes -> CompressedScene (checksums, entropy decoding)
  MLP decode     positions -> Gaussians through the per-cluster MLPs
  write .ply / .spz / .splat of the decoded Gaussians
With --file, times parse + MLP decode of an existing .ngs instead.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from neuralgs_ns.codec import CompressedScene
from neuralgs_ns.codec.quantize import quantize_positions, snap_positions, storage_order
from neuralgs_ns.compress.field import ClusteredMLPField
from neuralgs_ns.formats import write_gaussians
from neuralgs_ns.models.neuralgs import NeuralGSModelConfig


def synthetic_scene(n: int, preset: str, sh_degree: int = 3, seed: int = 0) -> CompressedScene:
    gen = torch.Generator().manual_seed(seed)
    config = NeuralGSModelConfig(preset=preset)
    target = config.preset_value("target_cluster_size", "cpu")
    centers = torch.randn(16, 3, generator=gen) * 2
    directions = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    sphere = torch.randint(0, len(centers), (n,), generator=gen)
    means = centers[sphere] + directions * (0.3 + 0.1 * sphere[:, None].float())
    k = max(1, n // target)
    sizes = torch.full((k,), n // k)
    sizes[: n - int(sizes.sum())] += 1
    labels = torch.repeat_interleave(torch.arange(k), sizes)[torch.randperm(n, generator=gen)].sort().values
    positions, grid = snap_positions(means, config.position_bits)
    order = storage_order(quantize_positions(positions, grid, config.position_bits), labels)
    positions = positions[order]
    n_attributes = 11 + 3 * ((sh_degree + 1) ** 2 - 1)
    field = ClusteredMLPField.from_points(config.field_config("cpu"), positions, labels, n_attributes, k, seed=seed)
    model = type("Model", (), {})()
    model.config, model.field, model.positions, model.labels, model.position_grid = config, field, positions, labels, grid
    model.attribute_mins, model.attribute_maxs = -torch.ones(n_attributes), torch.ones(n_attributes)
    config.sh_degree = sh_degree
    return CompressedScene.from_model(model)


def timed(label: str, fn):
    start = time.perf_counter()
    out = fn()
    print(f"  {label:<16}{time.perf_counter() - start:8.2f} s", flush=True)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gaussians", type=int, default=1_000_000)
    parser.add_argument("--preset", default="cpu", choices=["cpu", "neuralgs"])
    parser.add_argument("--file", type=Path, help="time an existing .ngs instead of a synthetic scene")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.file:
        data = args.file.read_bytes()
        print(f"{args.file}: {len(data):,} bytes")
    else:
        scene = timed("build scene", lambda: synthetic_scene(args.gaussians, args.preset))
        print(f"{args.gaussians:,} Gaussians, {scene.n_clusters} clusters, {args.preset} MLPs")
        data = timed("encode", scene.to_bytes)
        print(f"  {len(data):,} bytes, {8 * len(data) / args.gaussians:.1f} bits/Gaussian")
    path = args.file or Path("bench.ngs")
    parsed = timed("parse", lambda: CompressedScene.from_bytes(data, path))
    gaussians = timed("MLP decode", parsed.decode)
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in (".ply", ".spz", ".splat"):
            timed(f"write {suffix}", lambda: write_gaussians(gaussians, Path(tmp) / f"out{suffix}"))


if __name__ == "__main__":
    sys.exit(main())

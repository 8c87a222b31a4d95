"""benchmarks/bench_scale.py: the grown scenes keep their source's look, and a shortened run
reports its steps, an estimate at the default steps and keeps its log and JSON."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import torch

from neuralgs_ns.formats import write_ply
from neuralgs_ns.models.neuralgs import NeuralGSModelConfig, scene_steps
from test_bench import load_benchmark, random_teacher

bench_scale = load_benchmark("bench_scale")


def test_a_grown_scene_splits_each_gaussian_inside_its_ellipsoid():
    source = random_teacher(n=50)
    grown = bench_scale.grown_scene(source, 200)
    assert len(grown) == 200
    parent = torch.arange(200) % 50
    copies = 200 / 50
    assert torch.equal(grown.opacities, source.opacities[parent])
    assert torch.equal(grown.features_rest, source.features_rest[parent])
    assert torch.allclose(grown.scales, source.scales[parent] - math.log(copies) / 3)
    # Offsets are one sigma along the parent's axes: within 6 sigma of the largest axis.
    reach = 6 * torch.exp(source.scales[parent]).max(dim=-1).values
    assert bool(((grown.means - source.means[parent]).norm(dim=-1) < reach).all())


def test_a_smaller_scene_keeps_the_most_opaque():
    source = random_teacher(n=50)
    source = replace(source, opacities=torch.linspace(-3, 3, 50)[:, None])
    kept = bench_scale.grown_scene(source, 10)
    assert sorted(kept.opacities[:, 0].tolist()) == sorted(torch.linspace(-3, 3, 50)[-10:].tolist())


def test_a_shortened_run_reports_its_steps_and_the_default_estimate(tmp_path, capsys):
    source = tmp_path / "source.ply"
    write_ply(random_teacher(n=150), source)
    out = tmp_path / "scale.json"
    bench_scale.main([str(source), "--sizes", "300", "--fit-iterations", "4", "--fine-tune-iterations", "2",
                      "--workdir", str(tmp_path / "work"), "--json-out", str(out)])
    (r,) = json.loads(out.read_text())
    assert r["gaussians"] == 300 and (r["fit_iterations"], r["fine_tune_iterations"]) == (4, 2)
    defaults = [scene_steps(NeuralGSModelConfig(preset="cpu"), name, "cpu", r["kept"])
                for name in ("fit_iterations", "fine_tune_iterations")]
    assert [r["default_fit_iterations"], r["default_fine_tune_iterations"]] == defaults
    assert r["estimated_default_seconds"] > r["total_seconds"]
    assert r["peak_rss_gib"] > 0 and r["bytes"] > 0 and math.isfinite(r["psnr"])
    assert "Stage D: fine-tune" in (tmp_path / "work" / "n300" / "compress.log").read_text()
    assert f"({defaults[0]} + {defaults[1]}, estimated)" in capsys.readouterr().out

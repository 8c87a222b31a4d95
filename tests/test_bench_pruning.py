"""benchmarks/bench_pruning.py: the pruned teacher's held-out PSNR, on a made-up .ply."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from neuralgs_ns.compress.pipeline_run import TeacherViews, render_teacher_dataset
from neuralgs_ns.formats import write_ply
from test_bench import load_benchmark, random_teacher

VIEWS = TeacherViews(n_train=6, n_val=3, resolution=48)


@pytest.fixture(scope="module")
def bench_pruning():
    return load_benchmark("bench_pruning")


def test_rows_count_the_kept_gaussians_and_pruning_costs_psnr(bench_pruning, tmp_path):
    teacher = random_teacher(n=2000)
    write_ply(teacher, tmp_path / "t.ply")
    out = bench_pruning.main([str(tmp_path / "t.ply"), "--fractions", "0", "0.5", "0.95", "--n-train-views", "6",
                              "--n-val-views", "3", "--resolution", "48", "--json-out", str(tmp_path / "p.json")])
    assert json.loads((tmp_path / "p.json").read_text()) == out
    rows = out["rows"]
    assert [r["gaussians"] for r in rows] == [2000, 1000, 100]
    assert rows[0]["psnr"] > 90  # unpruned: the teacher against its own renders
    assert rows[0]["psnr"] > rows[1]["psnr"] > rows[2]["psnr"]
    # What the compressor sees on training views falls with pruning too; nothing pruned is lossless.
    assert rows[0]["train_psnr_vs_teacher"] is None
    assert rows[1]["train_psnr_vs_teacher"] > rows[2]["train_psnr_vs_teacher"]


def test_held_out_views_are_those_compress_renders(bench_pruning, tmp_path):
    # An independent path to the same images: the dataset `neuralgs compress` writes without data.
    teacher = random_teacher(n=500)
    render_teacher_dataset(teacher, tmp_path, VIEWS, "cpu")
    held_out = bench_pruning.teacher_sphere_views(teacher, VIEWS, held_out=True)
    assert len(held_out) == VIEWS.n_val
    for i, (_, _, _, _, image) in enumerate(held_out):
        rgba = np.asarray(Image.open(tmp_path / "val" / f"r_{i}.png")).astype(np.float32) / 255
        on_white = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
        assert np.abs(on_white - image.numpy()).max() < 3 / 255

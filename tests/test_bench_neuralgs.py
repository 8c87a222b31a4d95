"""benchmarks/bench_neuralgs.py's per-view accounting: views the teacher itself breaks are
reported apart, and the per-view PSNRs are what the mean is made of."""

import statistics

import pytest
import torch

from neuralgs_ns.compress.pipeline_run import sphere_cameras
from test_bench import load_benchmark, random_teacher
from test_bench_pruning import VIEWS


@pytest.fixture(scope="module")
def bench_neuralgs():
    return load_benchmark("bench_neuralgs")


def test_views_the_teacher_breaks_are_set_apart(bench_neuralgs):
    teacher = [30.0, 8.7, 32.0, 14.9]
    runs = [dict(view_psnrs=[29.0, 20.0, 31.0, 25.0]), dict(view_psnrs=[28.0, 9.0, 30.0, 12.0])]
    summary = bench_neuralgs.clean_view_summary(teacher, runs)
    assert summary["broken_views"] == [1, 3]
    assert summary["teacher"] == pytest.approx(31.0)
    assert summary["runs"] == pytest.approx([30.0, 29.0])


def test_no_broken_views_compares_every_view(bench_neuralgs):
    summary = bench_neuralgs.clean_view_summary([30.0, 31.0], [dict(view_psnrs=[29.0, 30.0])])
    assert summary["broken_views"] == [] and summary["teacher"] == pytest.approx(30.5)


def test_mean_psnr_is_the_mean_of_the_views(bench_neuralgs):
    teacher = random_teacher(n=300)
    white = torch.ones(1, 3)
    held_out = []
    for _, viewmat, K in sphere_cameras(teacher, 3, VIEWS):
        image = teacher.render(viewmat[None], K[None], VIEWS.resolution, VIEWS.resolution, backgrounds=white)[0][0]
        held_out.append((viewmat, K, VIEWS.resolution, VIEWS.resolution, image.clamp(0, 1) * 0.9))
    values = bench_neuralgs.view_psnrs(teacher, held_out, "cpu")
    assert len(values) == 3 and len(set(values)) > 1 and all(v < 60 for v in values)
    assert bench_neuralgs.mean_psnr(teacher, held_out, "cpu") == pytest.approx(statistics.mean(values))


def test_fidelity_targets_are_the_teachers_own_renders(bench_neuralgs):
    # The teacher against its own renders is exact (100 dB, psnr's floor on the error); a copy
    # with dimmer colours is not.
    teacher = random_teacher(n=300)
    cameras = [(viewmat, K, VIEWS.resolution, VIEWS.resolution) for _, viewmat, K in sphere_cameras(teacher, 2, VIEWS)]
    renders = bench_neuralgs.render_on_white(teacher, cameras, "cpu")
    assert len(renders) == 2 and renders[0].shape == (VIEWS.resolution, VIEWS.resolution, 3)
    as_teacher = [(*camera, image) for camera, image in zip(cameras, renders)]
    assert bench_neuralgs.view_psnrs(teacher, as_teacher, "cpu") == pytest.approx([100.0, 100.0])
    dimmer = teacher.subset(torch.arange(len(teacher)))
    dimmer.features_dc = dimmer.features_dc - 0.3
    values = bench_neuralgs.view_psnrs(dimmer, as_teacher, "cpu")
    assert all(10 < v < 60 for v in values)

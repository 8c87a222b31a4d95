"""`neuralgs bench` on a tiny random teacher: every row's size against independent arithmetic,
quality where it is known (the PLY is the teacher), an injected failure kept to its own row,
png-gsplat reported unavailable on a CPU machine, and one-line errors for bad options.

One bench run without --data (through the CLI) is shared by most tests; a second, cheap one
uses its teacher renders as --data.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from importlib.util import find_spec, module_from_spec, spec_from_file_location
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from neuralgs_ns import bench, formats
from neuralgs_ns.cli import main as neuralgs_cli
from neuralgs_ns.compress.clustering import attribute_count
from neuralgs_ns.compress.rate import default_target_bytes
from neuralgs_ns.formats import ply_size, write_ply
from neuralgs_ns.gaussians import Gaussians

N = 3000  # enough that half the default NeuralGS file is above the smallest possible
METHODS = ["ply", "ply-fp16", "spz", "spz-gsply", "prune-40", "prune-66", "prune-40-spz", "png-gsplat", "neuralgs",
           "neuralgs-curve"]
FAILING = "prune-66"  # its encoder is replaced by one that raises
TINY_VIEWS = ["--views.n-train", "4", "--views.n-val", "2", "--views.resolution", "32"]
TINY_NEURALGS = ["--neuralgs-fit-iterations", "10", "--neuralgs-fine-tune-iterations", "3", "--device", "cpu"]


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module (the folder is not a package)."""
    path = Path(__file__).parent.parent / "benchmarks" / f"{name}.py"
    spec = spec_from_file_location(name, path)
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_teacher(n=N, degree=1, seed=0) -> Gaussians:
    """A shell of coloured, fairly opaque Gaussians around the origin."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    return Gaussians(
        means=direction * (0.6 + 0.2 * torch.rand(n, 1, generator=g)),
        scales=math.log(0.08) + 0.3 * torch.randn(n, 3, generator=g),
        quats=torch.randn(n, 4, generator=g),
        opacities=torch.full((n, 1), 2.0),
        features_dc=torch.randn(n, 3, generator=g),
        features_rest=0.1 * torch.randn(n, (degree + 1) ** 2 - 1, 3, generator=g),
    )


def _ply_header(path) -> bytes:
    data = path.read_bytes()
    return data[: data.index(b"end_header\n") + len(b"end_header\n")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(teacher path, output dir, results.json) of one bench run without --data."""
    root = tmp_path_factory.mktemp("bench")
    teacher = root / "teacher.ply"
    write_ply(random_teacher(), teacher)
    out = root / "out"

    def broken_encoder(*args):
        raise RuntimeError("injected failure\nsecond line")

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(bench.METHODS, FAILING, replace(bench.METHODS[FAILING], encode=broken_encoder))
        code = neuralgs_cli(["bench", str(teacher), "--output-dir", str(out), "--methods", *METHODS,
                             *TINY_VIEWS, *TINY_NEURALGS])
    assert code == 0
    return teacher, out, json.loads((out / "results.json").read_text())


def _rows(results) -> dict:
    return {row["method"]: row for row in results["rows"]}


def test_outputs_exist_and_describe_the_run(run):
    _, out, results = run
    for name in ("results.json", "results.md", "rd.png", "strip.png"):
        assert (out / name).is_file(), name
    with Image.open(out / "rd.png") as rd:
        assert rd.width > 0 and rd.height > 0
    with Image.open(out / "strip.png") as strip:
        # teacher, five methods that ran, error map: at least 7 square panels side by side
        assert strip.width > 6 * strip.height > 0
    # neuralgs-curve expands into its rate points, after the default run they scale
    names = [row["method"] for row in results["rows"]]
    assert names[: len(METHODS) - 1] == METHODS[:-1]
    assert len(names) == len(METHODS) - 1 + len(bench.CURVE_FACTORS)
    assert all(name.startswith("neuralgs@") for name in names[len(METHODS) - 1 :])
    assert results["machine"]["cpu_count"] >= 1 and results["machine"]["torch"] == torch.__version__
    assert results["machine"]["device"] == "cpu" and results["machine"]["date"]
    assert results["command"].startswith("neuralgs bench ") and "--methods ply ply-fp16" in results["command"]
    assert results["has_ground_truth"] is False and results["eval_views"] == 2
    assert any("teacher's renders" in note for note in results["notes"])
    md = (out / "results.md").read_text()
    assert results["command"] in md and "| method | size | ratio |" in md
    assert all(f"| {m} |" in md for m in METHODS if m != "neuralgs-curve")
    assert "PSNR GT" not in md  # no ground truth without --data


def test_ply_row_is_the_teacher(run):
    _, out, results = run
    row = _rows(results)["ply"]
    assert row["status"] == "ok" and row["ratio"] == 1.0 and row["gaussians"] == N
    assert row["bytes"] == results["teacher_bytes"] == ply_size(random_teacher())
    assert row["bytes"] == (out / "files/ply.ply").stat().st_size
    assert row["psnr_teacher"] > 40 and row["ssim_teacher"] > 0.99
    assert row["psnr_gt"] is None
    for key in ("encode_seconds", "decode_seconds", "render_ms"):
        assert math.isfinite(row[key]) and row[key] >= 0


def test_fp16_ply_is_half_the_floats(run):
    _, out, results = run
    header = _ply_header(out / "files/ply.ply")
    n_props = header.count(b"\nproperty float ")
    assert n_props == 3 + 3 + 3 + 9 + 1 + 3 + 4  # xyz, normals, DC, degree-1 rest, opacity, scales, rotation
    half_header = header.replace(b"property float ", b"property half ")
    assert _ply_header(out / "files/ply-fp16.ply") == half_header
    row = _rows(results)["ply-fp16"]
    assert row["bytes"] == len(half_header) + N * n_props * 2
    assert row["ratio"] == pytest.approx(results["teacher_bytes"] / row["bytes"])
    assert 1.9 < row["ratio"] < 2.0
    assert row["gaussians"] == N and row["psnr_teacher"] > 40


@pytest.mark.skipif(find_spec("gsply") is None, reason="gsply not installed")
def test_spz_row_and_gsply_conventions(run, tmp_path):
    from neuralgs_ns.formats import spz_bytes

    _, out, results = run
    row = _rows(results)["spz"]
    assert row["status"] == "ok" and row["gaussians"] == N
    assert row["bytes"] == len(spz_bytes(random_teacher())) == (out / "files/spz.spz").stat().st_size
    assert row["psnr_teacher"] > 30
    # gsply's own writer: an independent SPZ of the same teacher, 8-bit SH, so not smaller.
    independent = _rows(results)["spz-gsply"]
    assert independent["status"] == "ok" and independent["gaussians"] == N
    assert independent["bytes"] == (out / "files/spz-gsply.spz").stat().st_size >= row["bytes"]
    assert independent["psnr_teacher"] > 30

    # gsply's GSData read as ours: log scales, logit opacities, wxyz, SH rest coefficient-major.
    g = random_teacher(n=40, degree=2, seed=5)
    path = tmp_path / "s.spz"
    path.write_bytes(spz_bytes(g, version=2))  # x, y, z stored: the checks below are v2's
    back = formats.read_spz_gsply(path)
    assert back.sh_degree == 2 and len(back) == 40
    assert (back.means - g.means).abs().max() <= 0.5 / 2**12 + 1e-6
    assert (back.scales - g.scales).abs().max() <= 0.5 / 16 + 1e-5
    assert (back.activated_opacities - g.activated_opacities).abs().max() <= 0.5 / 255 + 1e-5
    q = torch.nn.functional.normalize(g.quats, dim=-1)
    q = q * torch.where(q[:, :1] < 0, -1.0, 1.0)
    assert (back.quats[:, 1:] - q[:, 1:]).abs().max() <= 0.5 / 127.5 + 1e-5  # xyz stored, w recomputed
    assert (back.quats * q).sum(-1).min() > 0.99  # the same rotation, wxyz order
    assert (back.features_dc - g.features_dc).abs().max() <= 0.5 / (0.15 * 255) + 1e-5
    assert (back.features_rest - g.features_rest).abs().max() < 0.07  # 4-5 bit SH buckets


def test_sog_row(tmp_path):
    """The sog row on its own (no NeuralGS run): its file's size, read back, close to the teacher."""
    teacher = tmp_path / "t.ply"
    write_ply(random_teacher(n=500), teacher)
    out = tmp_path / "out"
    assert neuralgs_cli(["bench", str(teacher), "--output-dir", str(out), "--methods", "ply", "sog",
                         "--device", "cpu", *TINY_VIEWS]) == 0
    rows = _rows(json.loads((out / "results.json").read_text()))
    row = rows["sog"]
    assert row["status"] == "ok", row["reason"]
    assert row["bytes"] == (out / "files/sog.sog").stat().st_size < rows["ply"]["bytes"]
    assert row["gaussians"] == 500 and row["psnr_teacher"] > 30


def test_pruning_keeps_the_important_fraction(run):
    _, out, results = run
    row = _rows(results)["prune-40"]
    assert row["status"] == "ok" and row["gaussians"] == round(0.6 * N)
    n_props = _ply_header(out / "files/ply.ply").count(b"\nproperty float ")
    assert row["bytes"] == len(_ply_header(out / "files/prune-40.ply")) + round(0.6 * N) * n_props * 4
    assert 0 < row["psnr_teacher"] < 100  # lossy, measured


def test_injected_failure_is_one_row(run):
    _, out, results = run
    rows = _rows(results)
    assert rows[FAILING]["status"] == "error"
    assert rows[FAILING]["reason"] == "RuntimeError: injected failure"
    assert rows[FAILING]["bytes"] is None
    assert f"{FAILING}: error: RuntimeError: injected failure" in (out / "results.md").read_text()
    # the methods after it still ran
    assert rows["neuralgs"]["status"] == "ok"


@pytest.mark.skipif(torch.cuda.is_available() and find_spec("torchpq") is not None and find_spec("plas") is not None,
                    reason="png-gsplat can run here")
def test_png_gsplat_unavailable_with_reason(run):
    _, out, results = run
    row = _rows(results)["png-gsplat"]
    assert row["status"] == "unavailable" and row["bytes"] is None
    assert "CUDA" in row["reason"] and "torchpq" in row["reason"] and "plas" in row["reason"]
    assert "png-gsplat: unavailable: " in (out / "results.md").read_text()


def test_neuralgs_default_and_its_curve_of_target_sizes(run):
    _, out, results = run
    rows = _rows(results)
    row = rows["neuralgs"]
    path = out / "files/neuralgs.ngs"
    assert row["status"] == "ok" and row["path"] == str(path) and row["bytes"] == path.stat().st_size
    assert row["bytes"] < results["teacher_bytes"]
    # no --target-size: the default size rule sets the file (degree-1 teacher)
    rule = default_target_bytes(N, attribute_count(1))
    assert 0.9 * rule <= row["bytes"] <= rule and row["gaussians"] < N
    assert math.isfinite(row["psnr_teacher"]) and row["encode_seconds"] > row["decode_seconds"]
    # The curve: 0.5, 0.7, 1.4 and 2 times the default's size (3 significant digits), each
    # file within 90-100% of its target; nerfstudio runs named after the teacher and the point.
    curve = [r for r in results["rows"] if r["method"].startswith("neuralgs@")]
    targets = [bench._three_digits(row["bytes"] * f) for f in bench.CURVE_FACTORS]
    assert [r["method"] for r in curve] == [bench.sized_method_name(t) for t in targets]
    for r, target in zip(curve, targets):
        assert r["status"] == "ok", r["reason"]
        assert 0.9 * target <= r["bytes"] <= target, (r["method"], r["bytes"])
    runs = sorted(p.name for p in (out / "runs").iterdir() if (p / "neuralgs").is_dir())
    assert runs == sorted(["teacher-neuralgs"] + [f"teacher-{r['method']}" for r in curve])


def test_pruning_then_spz_is_the_pruned_teacher_in_spz(run):
    from neuralgs_ns.formats import spz_bytes

    _, out, results = run
    row = _rows(results)["prune-40-spz"]
    assert row["status"] == "ok" and row["gaussians"] == round(0.6 * N)
    assert row["bytes"] == (out / "files/prune-40-spz.spz").stat().st_size
    assert row["bytes"] < _rows(results)["spz"]["bytes"] and row["bytes"] < _rows(results)["prune-40"]["bytes"]
    # the same Gaussians as prune-40 (read back by gsply), SPZ-quantised
    pruned = read_ply_gaussians(out / "files/prune-40.ply")
    assert row["bytes"] == len(spz_bytes(pruned))


class FakeLPIPS(torch.nn.Module):
    """Stands in for AlexNet LPIPS (not downloadable offline): mean |a - b| of [B, 3, H, W] images."""

    def forward(self, a, b):
        assert a.shape == b.shape and a.shape[:2] == (1, 3)
        return (a - b).abs().mean()


def test_with_data_scores_against_ground_truth(run, tmp_path, monkeypatch):
    from neuralgs_ns.models import portable_splatfacto

    monkeypatch.setattr(portable_splatfacto, "load_lpips", FakeLPIPS)
    teacher, out, _ = run
    out2 = tmp_path / "with-data"
    assert neuralgs_cli(["bench", str(teacher), "--output-dir", str(out2), "--data", str(out / "teacher-views"),
                         "--methods", "ply", "prune-40", "--device", "cpu"]) == 0
    results = json.loads((out2 / "results.json").read_text())
    ply, pruned = _rows(results)["ply"], _rows(results)["prune-40"]
    assert results["has_ground_truth"] is True and not (out2 / "teacher-views").exists()
    # ground truth = the teacher's renders stored as 8-bit PNGs: the PLY is within rounding
    assert 40 < ply["psnr_gt"] < 100 and ply["psnr_teacher"] > 99
    assert np.isfinite(pruned["psnr_gt"]) and pruned["psnr_gt"] < ply["psnr_gt"]
    assert ply["lpips_teacher"] == 0 and 0 < ply["lpips_gt"] < pruned["lpips_gt"]
    assert "| PSNR GT | SSIM GT | LPIPS GT | PSNR teacher |" in (out2 / "results.md").read_text()
    assert any(note.startswith("teacher frame: as stored") for note in results["notes"])


def read_ply_gaussians(path):
    from neuralgs_ns.formats import read_ply

    return read_ply(path)


@pytest.mark.parametrize("problem", ["unknown method", "bad size", "missing teacher", "missing parent"])
def test_bad_options_fail_in_one_line(tmp_path, capsys, problem):
    teacher = tmp_path / "t.ply"
    write_ply(random_teacher(n=10), teacher)
    out = tmp_path / "out"
    args = {"unknown method": [str(teacher), "--output-dir", str(out), "--methods", "ply", "draco"],
            "bad size": [str(teacher), "--output-dir", str(out), "--methods", "neuralgs@12parsecs"],
            "missing teacher": [str(tmp_path / "nope.ply"), "--output-dir", str(out)],
            "missing parent": [str(teacher), "--output-dir", str(tmp_path / "a" / "b")]}[problem]
    assert neuralgs_cli(["bench", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("neuralgs: error: ") and "\n" not in err
    expected = {"unknown method": "'draco'", "bad size": "'12parsecs' is not a size", "missing teacher": "nope.ply",
                "missing parent": "does not exist"}
    assert expected[problem] in err
    assert not out.exists()  # failed before any work


def test_the_ply_row_is_the_teacher_file_as_given_without_normals(tmp_path):
    """A .ply without normals (as many exported splats are) is benched as it is: the ply row
    is its bytes on disk, ratio 1, not a larger PLY with normals added."""
    teacher = tmp_path / "no-normals.ply"
    write_ply(random_teacher(n=200, degree=0), teacher, normals=False)
    out = tmp_path / "out"
    code = neuralgs_cli(["bench", str(teacher), "--output-dir", str(out), "--methods", "ply", *TINY_VIEWS,
                         "--device", "cpu"])
    assert code == 0
    row = _rows(json.loads((out / "results.json").read_text()))["ply"]
    assert row["bytes"] == teacher.stat().st_size == (out / "files/ply.ply").stat().st_size
    assert row["ratio"] == 1.0 and b"property float nx" not in _ply_header(out / "files/ply.ply")

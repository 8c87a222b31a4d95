"""`neuralgs demo` end to end with a tiny budget: scene, teacher, compression, table, picture."""

import math
import re

from PIL import Image

from neuralgs_ns.cli import main as neuralgs_cli
from neuralgs_ns.codec import CompressedScene

TINY = dict(teacher_steps=30, fit_iterations=10, fine_tune_iterations=10, train_views=6, val_views=2, resolution=32,
            device="cpu")


def _demo(out, **overrides) -> int:
    options = {**TINY, **overrides}
    args = [x for k, v in options.items() for x in ("--" + k.replace("_", "-"), str(v))]
    return neuralgs_cli(["demo", "--output-dir", str(out)] + args)


def _row(table: str, name: str) -> list:
    """Cells after the name of the table row for `name` (a name then a Gaussian count)."""
    return re.search(rf"^{name}\s+([\d,]+ .*)$", table, flags=re.M).group(1).split()


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert _demo(out) == 0
    table = capsys.readouterr().out
    table = table[table.index("NeuralGS demo:"):]

    teacher, compressed = _row(table, "teacher"), _row(table, "NeuralGS")
    ratio = re.search(r"^ratio\s+(.*)$", table, flags=re.M).group(1).split()
    n_teacher, n_compressed = int(teacher[0].replace(",", "")), int(compressed[0].replace(",", ""))
    assert 0 < n_compressed < n_teacher
    for row in (teacher, compressed):
        assert row[2] in ("KiB", "MiB") and float(row[1]) > 0
        assert row[4] == "dB" and math.isfinite(float(row[3]))
    assert float(ratio[0].rstrip("x")) > 1 and math.isfinite(float(ratio[1]))
    assert "10 fit + 10 fine-tune steps" in table  # the steps the compress run reports it ran

    stages = dict(re.findall(r"^  (\S.*?)\s{2,}([\d.]+) s", table, flags=re.M))
    for stage in ("scene", "teacher training", "teacher eval", "Stage A: importance", "Stage B: clustering",
                  "Stage C: fit MLPs", "Stage D: fine-tune", "Evaluate held-out views", "total"):
        assert math.isfinite(float(stages[stage])), stage

    assert len(CompressedScene.load(out / "demo.ngs").decode()) == n_compressed
    with Image.open(out / "demo.png") as picture:
        assert picture.width > 3 * picture.height > 0  # four square panels side by side, labels on top
    assert len(list((out / "scene" / "val").glob("*.png"))) == 2

    # A second run reuses the folder: a smaller scene replaces the first, runs are new.
    assert _demo(out, val_views=1, resolution=24) == 0
    assert len(list((out / "scene" / "val").glob("*.png"))) == 1
    assert len(list((out / "runs" / "demo" / "neuralgs").iterdir())) == 2


def test_demo_rejects_bad_sizes(tmp_path, capsys):
    assert neuralgs_cli(["demo", "--output-dir", str(tmp_path), "--resolution", "8"]) == 1
    assert "--resolution" in capsys.readouterr().err

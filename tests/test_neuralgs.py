"""NeuralGS end to end on a tiny scene: `neuralgs compress` through nerfstudio's trainer,
`neuralgs decode`, ns-export and checkpoint reloading all describe the same Gaussians."""

import contextlib
import io
import re

import pytest
import torch
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation

from neuralgs_ns.cli import main as neuralgs_cli
from neuralgs_ns.codec import CompressedScene
from neuralgs_ns.compress.run import compress
from neuralgs_ns.formats import read_ply
from neuralgs_ns.gaussians import PARAM_NAMES
from neuralgs_ns.models.neuralgs import NeuralGSModel
from test_portable_splatfacto import trained_run, write_blender_scene  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def compressed(trained_run, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("neuralgs")
    losses, int8_steps = [], []
    original = NeuralGSModel.get_loss_dict

    def recording(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if torch.is_grad_enabled():  # a training step (not the guard's reference renders)
            losses.append(float(out["main_loss"]))
            int8_steps.append(self.field.int8_active)
        return out

    log = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(log):
        mp.setattr(NeuralGSModel, "get_loss_dict", recording)
        data = trained_run["config_path"].parent.parent.parent.parent.parent / "scene"
        code = neuralgs_cli(["compress", str(trained_run["checkpoint"]), "--output", str(root / "scene.ngs"),
                             "--data", str(data), "--preset", "cpu", "--fit-iterations", "200",
                             "--fine-tune-iterations", "40", "--run-dir", str(root / "runs"), "--device", "cpu"])
    assert code == 0
    run_dir = next((root / "runs").glob("*/neuralgs/*"))
    return dict(root=root, file=root / "scene.ngs", run_dir=run_dir, losses=losses, int8_steps=int8_steps,
                teacher=trained_run["model"], log=log.getvalue())


def test_compress_shows_a_progress_bar_not_the_step_table(compressed):
    log = compressed["log"]
    assert "fine-tune" in log and "40/40" in log
    assert "Step (% Done)" not in log  # nerfstudio's step table (kept by --verbose)


def test_compress_writes_a_smaller_scene(compressed):
    scene = CompressedScene.load(compressed["file"])
    n_teacher = compressed["teacher"].num_points
    assert len(scene.positions) == n_teacher - round(0.4 * n_teacher)  # 40% pruned
    assert torch.all(scene.labels[1:] >= scene.labels[:-1]), "positions are stored grouped by cluster"


def test_fine_tuning_lowers_the_photometric_loss(compressed):
    losses = compressed["losses"]
    assert len(losses) == 40
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8


def test_int8_weights_are_trained_over_the_last_fifth_of_fine_tuning(compressed):
    # 40 steps, int8_fraction 0.2: float16 for steps 0-31, the stored int8 weights for 32-39.
    assert compressed["int8_steps"] == [False] * 32 + [True] * 8


def test_decode_export_and_reload_agree(compressed, tmp_path):
    from nerfstudio.scripts.exporter import ExportGaussianSplat
    from nerfstudio.utils.eval_utils import eval_setup

    assert neuralgs_cli(["decode", str(compressed["file"]), "--output", str(tmp_path / "decoded.ply")]) == 0
    decoded = read_ply(tmp_path / "decoded.ply")
    config_path = compressed["run_dir"] / "config.yml"
    ExportGaussianSplat(load_config=config_path, output_dir=tmp_path / "export").main()
    exported = read_ply(tmp_path / "export" / "splat.ply")
    _, pipeline, _, _ = eval_setup(config_path, test_mode="inference")
    reloaded = pipeline.model.decode()
    for name in PARAM_NAMES:
        assert torch.equal(getattr(decoded, name), getattr(exported, name)), name
        assert torch.equal(getattr(decoded, name), getattr(reloaded, name).cpu()), name


def test_decode_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "bad.ngs").write_bytes(b"not a neuralgs file")
    assert neuralgs_cli(["decode", str(tmp_path / "bad.ngs"), "--output", str(tmp_path / "x.ply")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.ngs" in err and "wrong magic" in err
    assert not (tmp_path / "x.ply").exists()
    assert neuralgs_cli(["decode", str(tmp_path / "missing.ngs"), "--output", str(tmp_path / "x.ply")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_compress_without_data_trains_on_teacher_renders(trained_run, tmp_path):  # noqa: F811
    code = neuralgs_cli(["compress", str(trained_run["checkpoint"]), "--output", str(tmp_path / "s.ngs"),
                         "--preset", "cpu", "--fit-iterations", "20", "--fine-tune-iterations", "5",
                         "--run-dir", str(tmp_path / "runs"), "--device", "cpu",
                         "--views.n-train", "10", "--views.n-val", "3", "--views.resolution", "48"])
    assert code == 0
    views = tmp_path / "runs" / "spheres-views"
    assert len(list((views / "train").glob("*.png"))) == 10 and len(list((views / "val").glob("*.png"))) == 3
    assert len(CompressedScene.load(tmp_path / "s.ngs").decode()) > 0


def test_compress_rejects_a_missing_output_folder_before_any_work(trained_run, tmp_path, capsys):  # noqa: F811
    code = neuralgs_cli(["compress", str(trained_run["checkpoint"]), "--output", str(tmp_path / "no" / "s.ngs")])
    assert code == 1
    assert "does not exist" in capsys.readouterr().err


def test_resume_restores_the_checkpoint_without_compressing_again(compressed, monkeypatch, tmp_path):
    import yaml

    from neuralgs_ns.pipeline import NeuralGSTrainerConfig

    config = yaml.load((compressed["run_dir"] / "config.yml").read_text(), Loader=yaml.Loader)
    assert isinstance(config, NeuralGSTrainerConfig)
    config.load_dir = compressed["run_dir"] / "nerfstudio_models"
    config.max_num_iterations = 42  # two more steps after the checkpoint's 40
    config.vis = "tensorboard"
    config.output_dir = tmp_path  # the new checkpoints go here, not into the shared fixture's run

    def fail(*args, **kwargs):
        raise AssertionError("stages A-C rerun on resume")

    monkeypatch.setattr(NeuralGSModel, "compress_teacher", fail)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    model = trainer.pipeline.model
    stored = CompressedScene.load(compressed["file"])
    assert torch.equal(model.positions.cpu(), stored.positions)
    before = {k: v.clone() for k, v in model.field.state_dict().items()}
    trainer.train()
    # The optimiser trained the very MLPs the model decodes with (not stale copies).
    assert trainer.optimizers.optimizers["field"].param_groups[0]["params"][0] is model.field.weights[0]
    assert any(not torch.equal(before[k], v) for k, v in model.field.state_dict().items())


def test_ns_train_writes_the_compressed_file_into_its_run(compressed):
    from neuralgs_ns.models.neuralgs import COMPRESSED_FILE_NAME

    assert (compressed["run_dir"] / COMPRESSED_FILE_NAME).read_bytes() == compressed["file"].read_bytes()


@pytest.fixture(scope="module")
def sized(compressed, trained_run):  # noqa: F811
    """A compress run at 85% of the default file's size (between it and the smallest file
    possible for this 1.2k-Gaussian teacher), with corrections of opacity and scales."""
    from neuralgs_ns.compress.run import compress

    root = compressed["root"]
    target = int(0.85 * compressed["file"].stat().st_size)
    data = trained_run["config_path"].parent.parent.parent.parent.parent / "scene"
    report = compress(trained_run["checkpoint"], root / "sized.ngs", data=data, preset="cpu", device="cpu",
                      fit_iterations=200, fine_tune_iterations=20, run_dir=root / "sized-runs",
                      target_size=target, model_options={"residual_attributes": ("opacity", "scales")})
    return dict(report=report, target=target)


def test_a_target_size_is_met_within_ten_percent(sized):
    report, target = sized["report"], sized["target"]
    assert 0.9 * target <= report.compressed_bytes <= target
    assert report.compressed_bytes == report.output.stat().st_size
    scene = CompressedScene.load(report.output)
    assert scene.n_residual_columns == 4  # opacity and the three scales


def test_a_sized_run_decodes_to_its_checkpoint(sized):
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(sized["report"].config_path, test_mode="inference")
    reloaded = pipeline.model.decode()
    decoded = CompressedScene.load(sized["report"].output).decode()
    for name in PARAM_NAMES:
        assert torch.equal(getattr(decoded, name), getattr(reloaded, name).cpu()), name


def test_a_target_below_the_smallest_file_is_refused_before_any_work(trained_run, tmp_path, capsys):  # noqa: F811
    code = neuralgs_cli(["compress", str(trained_run["checkpoint"]), "--output", str(tmp_path / "s.ngs"),
                         "--target-size", "100", "--run-dir", str(tmp_path / "runs"), "--device", "cpu"])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "too small" in err and "smallest file possible is about" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "s.ngs").exists()


@pytest.mark.parametrize("budget_bytes", [None, 600.0])
@pytest.mark.parametrize("damaged", ["opacity", "scales", "rotations", "dc"])
def test_auto_corrections_choose_the_group_the_fit_got_wrong(damaged, budget_bytes):
    """residual_attributes=auto: with one group of a stage C fit far off and the others nearly
    right, the group chosen is the far one, judged by real renders against the teacher."""
    from types import SimpleNamespace

    from neuralgs_ns.compress.clustering import NormalizationTable, attribute_groups, attribute_matrix
    from test_gaussians import random_gaussians

    teacher = random_gaussians(n=400, degree=1, seed=3)
    teacher.scales = teacher.scales + 1.5  # large enough to cover the image
    targets_raw = attribute_matrix(teacher)
    table = NormalizationTable.fit(targets_raw)
    targets = table.normalize(targets_raw)
    g = torch.Generator().manual_seed(0)
    predicted = targets + 0.01 * torch.randn(targets.shape, generator=g)
    columns = attribute_groups(1)[damaged]
    predicted[:, columns] += 0.6 * torch.randn(predicted[:, columns].shape, generator=g)
    model = SimpleNamespace(positions=teacher.means, labels=torch.zeros(len(teacher), dtype=torch.long),
                            attribute_mins=table.mins, attribute_maxs=table.maxs,
                            config=SimpleNamespace(sh_degree=1), device=torch.device("cpu"))
    viewmat = torch.eye(4)
    viewmat[2, 3] = 6.0
    K = torch.tensor([[50.0, 0, 24], [0, 50.0, 24], [0, 0, 1]])
    views = [(viewmat, K, 48, 48)]
    fidelity = NeuralGSModel._fidelity(model, predicted, targets, teacher, views)
    chosen = NeuralGSModel._best_correction_group(model, fidelity, predicted, targets, attribute_groups(1),
                                                  budget_bytes, None)
    assert chosen == damaged


def test_the_cpu_preset_averages_the_last_tenth_of_the_steps(compressed):
    # The fixture's run: `neuralgs compress --preset cpu` with 40 fine-tune steps.
    assert "averaged over the last 4 steps" in " ".join(compressed["log"].split())


def test_weight_averaging_keeps_the_mean_of_the_last_steps(trained_run, tmp_path):  # noqa: F811
    # An independent record of the weights after every step (a callback that runs before the
    # model's own) against what the run kept: the mean of the last quarter of them.
    steps = []
    original = NeuralGSModel.get_training_callbacks

    def recorded(self, attributes):
        def record(step):
            steps.append([p.detach().clone() for p in self.field.parameters()])
        return [TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], record)] + original(self, attributes)

    kept = {}

    def inspect(stage, pipeline):
        if stage == "stage D":
            kept["weights"] = [p.detach().clone() for p in pipeline.model.field.parameters()]

    data = trained_run["config_path"].parent.parent.parent.parent.parent / "scene"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(NeuralGSModel, "get_training_callbacks", recorded)
        compress(trained_run["checkpoint"], tmp_path / "s.ngs", data=data, preset="cpu", device="cpu",
                 fit_iterations=100, fine_tune_iterations=20, run_dir=tmp_path / "runs", inspect=inspect,
                 model_options={"average_fraction": 0.25})
    assert len(steps) == 20
    last_five = [torch.stack(ws).mean(0) for ws in zip(*steps[-5:])]
    for mean, weights, last in zip(last_five, kept["weights"], steps[-1]):
        torch.testing.assert_close(weights, mean, rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(w, last) for w, last in zip(kept["weights"], steps[-1]))  # not the last step's


def test_a_trailing_mean_takes_the_last_steps_of_the_run_however_it_was_resumed():
    from neuralgs_ns.compress.averaging import TrailingMean

    for start in (0, 100):  # a run resumed at step 100 ends at step 119
        window = TrailingMean(0.25, total=20)
        for step in range(start, start + 20):
            window.update(step, start + 19, [torch.tensor([float(step)])])
        assert window.count == 5
        torch.testing.assert_close(window.mean[0], torch.tensor([start + 17.0]))  # mean of the last 5


def test_a_target_the_plan_cannot_spend_is_reported(compressed, trained_run, capsys):  # noqa: F811
    """Far above what this 1.2k-Gaussian teacher's MLPs can use: asked to prune 10%
    (--prune-fraction), the run keeps every Gaussian, lifts the MLPs' width cap and adds a
    cluster (down to 500 Gaussians each), and when the file still stays under 90% of the
    target (never padded) it says so instead of claiming the size."""
    root = compressed["root"]
    target = 40 * compressed["file"].stat().st_size
    data = trained_run["config_path"].parent.parent.parent.parent.parent / "scene"
    code = neuralgs_cli(["compress", str(trained_run["checkpoint"]), "--output", str(root / "large.ngs"),
                         "--data", str(data), "--preset", "cpu", "--device", "cpu", "--fit-iterations", "20",
                         "--fine-tune-iterations", "2", "--run-dir", str(root / "large-runs"),
                         "--target-size", str(target), "--prune-fraction", "0.1"])
    assert code == 0
    size = (root / "large.ngs").stat().st_size
    scene = CompressedScene.load(root / "large.ngs")
    assert len(scene.positions) == compressed["teacher"].num_points and scene.n_clusters == 2
    assert size < 0.9 * target
    out = " ".join(capsys.readouterr().out.split())
    out = re.sub(r"\S+\.py:\d+ ", "", out)  # the log's source locations, wherever rich wraps them
    assert "pruning 0% instead of 10%" in out and "lifting their width cap" in out and "2 clusters instead of 1" in out
    assert f"target size {target:,} B: the file takes only {size:,} B" in out and "no Gaussian was pruned" in out


@pytest.mark.parametrize("option, value, message", [
    ("prune_fraction", 1.0, "prune-fraction must be in [0, 1), got 1.0 (--prune-fraction in neuralgs compress, "
                            "--pipeline.model.prune-fraction in ns-train)"),
    ("prune_fraction", -0.1, "prune-fraction must be in [0, 1)"),
    ("position_bits", 17, "position-bits must be between 1 and 16, got 17"),
    ("n_clusters", 0, "n-clusters must be 1 or more, got 0 (--pipeline.model.n-clusters in ns-train)"),
    ("int8_fraction", 1.5, "int8-fraction must be in [0, 1]"),
    ("target_size", "5 parsecs", "--target-size: '5 parsecs' is not a size"),
])
def test_a_model_option_no_stage_could_use_is_refused_as_the_config_is_built(option, value, message):
    """ns-train builds the config from its flags (tyro calls __init__), so the error comes
    before the teacher is even loaded; compress sets fields afterwards and calls check()."""
    from neuralgs_ns.errors import NeuralGSError
    from neuralgs_ns.models.neuralgs import NeuralGSModelConfig

    with pytest.raises(NeuralGSError) as err:
        NeuralGSModelConfig(**{option: value})
    assert message in str(err.value) and "\n" not in str(err.value)
    config = NeuralGSModelConfig()
    setattr(config, option, value)
    with pytest.raises(NeuralGSError):
        config.check()


def test_the_installed_command_prints_an_error_as_its_only_stderr_line(tmp_path):
    """In a fresh interpreter, as a user runs it: no import-time warnings ahead of the error."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "neuralgs_ns.cli", "compress", str(tmp_path / "missing.ply"),
                           "--output", str(tmp_path / "s.ngs"), "--prune-fraction", "1.5"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and not (tmp_path / "s.ngs").exists()
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("neuralgs: error: prune-fraction"), done.stderr


def test_the_installed_command_compresses_without_third_party_warnings(tmp_path):
    """A whole compress in a fresh interpreter, as a user runs it: nerfstudio's trainer warns
    on today's torch (GradScaler, float() of a loss that requires grad); stderr stays clean."""
    import subprocess
    import sys

    from test_bench import random_teacher

    from neuralgs_ns.formats import write_ply

    write_ply(random_teacher(n=300), tmp_path / "t.ply")
    done = subprocess.run([sys.executable, "-m", "neuralgs_ns.cli", "compress", str(tmp_path / "t.ply"),
                           "--output", str(tmp_path / "s.ngs"), "--fit-iterations", "5", "--fine-tune-iterations", "3",
                           "--views.n-train", "4", "--views.n-val", "2", "--views.resolution", "32",
                           "--run-dir", str(tmp_path / "runs"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and (tmp_path / "s.ngs").exists(), done.stderr
    assert "Warning" not in done.stderr, done.stderr


def test_a_prune_fraction_outside_zero_to_one_is_one_line(trained_run, tmp_path, capsys):  # noqa: F811
    code = neuralgs_cli(["compress", str(trained_run["checkpoint"]), "--output", str(tmp_path / "s.ngs"),
                         "--prune-fraction", "1.5", "--run-dir", str(tmp_path / "runs"), "--device", "cpu"])
    assert code == 1 and not (tmp_path / "s.ngs").exists()
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "prune-fraction must be in [0, 1), got 1.5 (--prune-fraction" in err

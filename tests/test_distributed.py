"""Data-parallel fine-tuning in two gloo processes on the CPU (`compress --num-devices 2`):
rank 0 compresses, both ranks train on different views and end with identical weights."""

import torch

from neuralgs_ns.codec import CompressedScene
from neuralgs_ns.compress.pipeline_run import TeacherViews
from neuralgs_ns.compress.run import compress
from neuralgs_ns.formats import write_ply
from test_gaussians import random_gaussians


def save_rank_state(rank, trainer):
    """Runs in each process after stage D: what the rank holds and which views it has left."""
    model = trainer.pipeline.model
    torch.save({"field": {k: v.cpu() for k, v in model.field.state_dict().items()},
                "residuals": model.residuals.detach().cpu(),
                "unseen": list(trainer.pipeline.datamanager.train_unseen_cameras)},
               trainer.base_dir / f"rank{rank}.pt")


def test_two_processes_train_one_model(tmp_path):
    teacher = random_gaussians(n=600, degree=1, seed=4)
    teacher.scales = teacher.scales + 1.0
    write_ply(teacher, tmp_path / "teacher.ply")
    report = compress(tmp_path / "teacher.ply", tmp_path / "scene.ngs", preset="cpu", device="cpu",
                      views=TeacherViews(n_train=12, n_val=2, resolution=48), fit_iterations=60,
                      fine_tune_iterations=15, run_dir=tmp_path / "runs", num_devices=2,
                      after_training=save_rank_state,
                      model_options={"residual_attributes": ("opacity",), "residual_step": 0.05})
    base = report.config_path.parent
    ranks = [torch.load(base / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    # Different views on each rank (their own samplers), the same weights (averaged gradients).
    assert ranks[0]["unseen"] != ranks[1]["unseen"]
    for name, value in ranks[0]["field"].items():
        assert torch.equal(value, ranks[1]["field"][name]), name
    assert torch.equal(ranks[0]["residuals"], ranks[1]["residuals"]) and ranks[0]["residuals"].numel() > 0
    # Rank 0 wrote the checkpoint and the file: both hold those weights.
    checkpoint = torch.load(next((base / "nerfstudio_models").glob("step-*.ckpt")), weights_only=False)["pipeline"]
    for name, value in ranks[0]["field"].items():
        assert torch.equal(checkpoint[f"_model.field.{name}"].cpu(), value), name
    decoded = CompressedScene.load(report.output).decode()
    assert len(decoded) == report.compressed_gaussians > 0
    assert report.psnr > 10.0

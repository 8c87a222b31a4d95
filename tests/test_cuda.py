"""The CUDA path (gsplat) against the CPU path, and a short train + compress on CUDA.

Skipped without a CUDA device (CI has none); `benchmarks/cuda_check.sh` runs them on a GPU."""

import pytest
import torch

from test_rasterize import DIFF, make_scene, rel_err, run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (gsplat's kernels)")


def _on(scene: dict, device: str) -> dict:
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in scene.items()}


@pytest.mark.parametrize("colors,sh_degree", [("rgb", None), ("sh", 3)])
@pytest.mark.parametrize("rasterize_mode", ["classic", "antialiased"])
def test_rasterize_on_cuda_matches_the_cpu_path(colors, sh_degree, rasterize_mode):
    from neuralgs_ns.render import rasterize

    scene = make_scene(n=400, n_cams=2, width=64, height=48, colors=colors, sh_degree=sh_degree, dtype=torch.float32)
    cpu_renders, cpu_alphas, _, cpu_grads = run(rasterize, scene, rasterize_mode=rasterize_mode)
    gpu_renders, gpu_alphas, _, gpu_grads = run(rasterize, _on(scene, "cuda"), rasterize_mode=rasterize_mode)
    assert rel_err(gpu_renders.cpu(), cpu_renders) < 2e-3
    assert rel_err(gpu_alphas.cpu(), cpu_alphas) < 2e-3
    for name in DIFF:
        got = None if gpu_grads[name] is None else gpu_grads[name].cpu()
        assert rel_err(got, cpu_grads[name]) < 2e-2, name


def test_importance_scores_agree_on_both_devices():
    from neuralgs_ns.compress.importance import importance_scores
    from test_gaussians import random_gaussians

    gaussians = random_gaussians(n=2000, degree=1, seed=1)
    gaussians.scales = gaussians.scales + 1.0
    scene = make_scene(n=1, n_cams=4, width=64, height=64, dtype=torch.float32)
    views = [(vm, K, 64, 64) for vm, K in zip(scene["viewmats"], scene["Ks"])]
    cpu = importance_scores(gaussians, views)
    gpu = importance_scores(gaussians.to("cuda"), [(vm.cuda(), K.cuda(), w, h) for vm, K, w, h in views])
    assert cpu.sum() > 0
    assert rel_err(gpu.cpu(), cpu) < 1e-2
    # The ranking pruning uses: the same Gaussians in the top half.
    half = len(cpu) // 2
    top_cpu, top_gpu = set(cpu.topk(half).indices.tolist()), set(gpu.cpu().topk(half).indices.tolist())
    assert len(top_cpu & top_gpu) >= 0.98 * half


def test_train_and_compress_on_cuda(tmp_path):
    """A short splatfacto-portable run on CUDA, then `compress` on CUDA with the paper's preset
    shortened: the file decodes to what the CUDA model holds and renders the scene."""
    from neuralgs_ns.codec import CompressedScene
    from neuralgs_ns.compress.run import compress
    from test_portable_splatfacto import portable_trainer_config, write_blender_scene

    data = write_blender_scene(tmp_path / "scene")
    config = portable_trainer_config(tmp_path, data, "cuda", 200, "cuda")
    config.save_config()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    assert trainer.pipeline.model.means.is_cuda
    trainer.train()

    report = compress(config.get_base_dir(), tmp_path / "scene.ngs", data=data, preset="neuralgs", device="cuda",
                      fit_iterations=300, fine_tune_iterations=100, run_dir=tmp_path / "runs")
    decoded = CompressedScene.load(report.output).decode()
    assert len(decoded) > 0 and all(torch.isfinite(getattr(decoded, n)).all() for n in ("means", "scales", "quats"))
    assert report.psnr > 15.0, report

"""splatfacto-portable on the CPU: training with densification, splatfacto-compatible
checkpoints, loading through nerfstudio's own tools on torch >= 2.6, and LPIPS offline.

One short training run (a procedural blender-format scene, 32x32 images) is shared by the
tests of this module.
"""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.models.splatfacto import SplatfactoModelConfig
from nerfstudio.utils.eval_utils import eval_setup

from neuralgs_ns.method_configs import neuralgs, splatfacto_portable
from neuralgs_ns.models import portable_splatfacto
from neuralgs_ns.models.portable_splatfacto import PortableSplatfactoModel, PortableSplatfactoModelConfig

IMAGE_SIZE = 32
N_TRAIN, N_VAL = 8, 2
TRAIN_STEPS = 60
CAMERA_ANGLE_X = 0.7

# Coloured spheres (centre, radius, RGB) making up the procedural scene.
SPHERES = [
    ((0.0, 0.0, 0.0), 0.6, (0.9, 0.3, 0.2)),
    ((0.7, 0.3, 0.2), 0.3, (0.2, 0.7, 0.3)),
    ((-0.5, -0.5, 0.3), 0.35, (0.2, 0.3, 0.9)),
]


def _look_at_c2w(azimuth: float, elevation: float, radius: float = 3.5) -> np.ndarray:
    """Blender camera-to-world [4, 4] (OpenGL axes: looks down -z, y up) aimed at the origin."""
    eye = radius * np.array([math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth),
                             math.sin(elevation)])
    back = eye / np.linalg.norm(eye)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, up, back], axis=1)
    c2w[:3, 3] = eye
    return c2w


def _render_spheres(c2w: np.ndarray) -> np.ndarray:
    """Ray-cast RGBA uint8 [H, W, 4] of the striped spheres; transparent where no sphere is hit."""
    focal = 0.5 * IMAGE_SIZE / math.tan(0.5 * CAMERA_ANGLE_X)
    pix = np.arange(IMAGE_SIZE) + 0.5
    u, v = np.meshgrid(pix, pix)
    dirs_cam = np.stack([(u - IMAGE_SIZE / 2) / focal, -(v - IMAGE_SIZE / 2) / focal, -np.ones_like(u)], -1)
    dirs = dirs_cam @ c2w[:3, :3].T
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    origin = c2w[:3, 3]
    depth = np.full(u.shape, np.inf)
    rgba = np.zeros(u.shape + (4,))
    for centre, radius, colour in SPHERES:
        oc = origin - np.asarray(centre)
        b = dirs @ oc
        disc = b**2 - (oc @ oc - radius**2)
        t = -b - np.sqrt(np.maximum(disc, 0.0))
        hit = (disc > 0) & (t > 0) & (t < depth)
        normal = (origin + t[..., None] * dirs - np.asarray(centre)) / radius
        stripes = 0.55 + 0.45 * (np.sin(8.0 * normal[..., 2] + 3.0 * normal[..., 0]) > 0)
        shade = 0.5 + 0.5 * np.clip(normal @ np.array([0.3, 0.4, 0.85]), 0.0, 1.0)
        rgba[hit, :3] = (np.asarray(colour) * (stripes * shade)[..., None])[hit]
        rgba[hit, 3] = 1.0
        depth = np.where(hit, t, depth)
    return (rgba * 255).round().astype(np.uint8)


def write_blender_scene(root: Path) -> Path:
    """Writes a blender-format dataset (transforms_{train,val,test}.json + RGBA PNGs) to `root`."""
    splits = {"train": range(N_TRAIN), "val": range(N_TRAIN, N_TRAIN + N_VAL)}
    (root / "images").mkdir(parents=True)
    for split, ids in splits.items():
        frames = []
        for i in ids:
            c2w = _look_at_c2w(azimuth=2 * math.pi * i / (N_TRAIN + N_VAL) + 0.1, elevation=0.35 + 0.25 * (i % 2))
            Image.fromarray(_render_spheres(c2w)).save(root / "images" / f"r_{i}.png")
            frames.append({"file_path": f"./images/r_{i}", "transform_matrix": c2w.tolist()})
        meta = json.dumps({"camera_angle_x": CAMERA_ANGLE_X, "frames": frames})
        (root / f"transforms_{split}.json").write_text(meta)
        if split == "val":
            (root / "transforms_test.json").write_text(meta)
    return root


def _train_psnr(pipeline) -> float:
    """Mean PSNR (dB) of the model's renders of all training views, in evaluation mode."""
    model = pipeline.model
    dm = pipeline.datamanager
    was_training = model.training
    model.eval()
    psnrs = []
    for i, data in enumerate(dm.cached_train):
        outputs = model.get_outputs_for_camera(dm.train_cameras[i : i + 1])
        gt = model.composite_with_background(model.get_gt_img(data["image"]), outputs["background"])
        psnrs.append(-10 * torch.log10(((outputs["rgb"] - gt) ** 2).mean()).item())
    model.train(was_training)
    return float(np.mean(psnrs))


def _test_model_config(config_type=PortableSplatfactoModelConfig, **overrides):
    """A small, fast splatfacto configuration whose densification starts within a few steps."""
    options = dict(
        num_random=1500,
        random_scale=2.0,
        background_color="white",  # the blender dataparser composites the images onto white
        num_downscales=0,
        warmup_length=10,
        refine_every=10,
        reset_alpha_every=100,  # no opacity reset inside the run
        densify_size_thresh=0.06,  # so that both duplication and splitting happen
        split_screen_size=0.3,  # radii are 2+ px, over 0.05 of 32 px: the default splits everything
        sh_degree_interval=20,
    )
    options.update(overrides)
    return config_type(**options)


def _recorded(method, log: list):
    """`method` wrapped so that each of its return values is appended to `log`."""

    def wrapper(self, *args):
        log.append(method(self, *args))
        return log[-1]

    return wrapper


def portable_trainer_config(root: Path, data: Path, device_type: str, steps: int, timestamp: str):
    """splatfacto-portable's TrainerConfig for the test scene at `data`: `steps` steps on
    `device_type`, no evaluation while training, one checkpoint at the end, runs under `root`."""
    config = copy.deepcopy(splatfacto_portable.config)
    config.machine.device_type = device_type
    config.vis = "tensorboard"
    config.output_dir = root / "outputs"
    config.experiment_name = "spheres"
    config.timestamp = timestamp
    config.max_num_iterations = steps
    config.steps_per_eval_image = 0
    config.steps_per_eval_all_images = 0
    config.steps_per_save = 10_000
    config.logging.local_writer.enable = False
    config.pipeline.datamanager.dataparser = BlenderDataParserConfig(data=data)
    config.pipeline.model = _test_model_config()
    return config


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """Trains splatfacto-portable for TRAIN_STEPS on the CPU; returns what the tests inspect."""
    from gsplat.strategy import DefaultStrategy

    root = tmp_path_factory.mktemp("portable")
    config = portable_trainer_config(root, write_blender_scene(root / "scene"), "cpu", TRAIN_STEPS, "test")

    # Record what DefaultStrategy does, to check that densification ran on CPU tensors.
    grown, pruned = [], []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DefaultStrategy, "_grow_gs", _recorded(DefaultStrategy._grow_gs, grown))
        mp.setattr(DefaultStrategy, "_prune_gs", _recorded(DefaultStrategy._prune_gs, pruned))
        torch.manual_seed(0)
        np.random.seed(0)
        config.save_config()
        trainer = config.setup(local_rank=0, world_size=1)
        trainer.setup()
        n_initial = trainer.pipeline.model.num_points
        psnr_before = _train_psnr(trainer.pipeline)
        trainer.train()
        psnr_after = _train_psnr(trainer.pipeline)

    checkpoints = sorted(config.get_checkpoint_dir().glob("step-*.ckpt"))
    return dict(
        config_path=config.get_base_dir() / "config.yml", checkpoint=checkpoints[-1],
        pipeline=trainer.pipeline, model=trainer.pipeline.model, n_initial=n_initial, grown=grown, pruned=pruned,
        psnr_before=psnr_before, psnr_after=psnr_after,
    )


def test_training_on_cpu_improves_and_densifies(trained_run):
    assert trained_run["psnr_after"] > trained_run["psnr_before"] + 3.0, trained_run
    # Refinement at steps 20, 30, 40, 50 (after warm-up, outside the post-reset pause).
    assert len(trained_run["grown"]) >= 3
    assert sum(d for d, _ in trained_run["grown"]) > 0, "no Gaussian was duplicated"
    assert sum(s for _, s in trained_run["grown"]) > 0, "no Gaussian was split"
    assert sum(trained_run["pruned"]) > 0, "no Gaussian was pruned"
    model = trained_run["model"]
    assert model.num_points != trained_run["n_initial"]
    assert all(torch.isfinite(p).all() for p in model.gauss_params.values())


def _splatfacto_pair(monkeypatch, seed_points):
    """A nerfstudio SplatfactoModel and a PortableSplatfactoModel built from the same
    options, seed points and random state, both on the CPU."""
    import torchmetrics.functional.image.lpips as tm_lpips

    # Splatfacto downloads LPIPS's AlexNet and puts seed colours on CUDA: give it an
    # untrained AlexNet (same keys) and make .cuda() a no-op, for this test only.
    tv_features = tm_lpips._get_tv_model_features
    monkeypatch.setattr(tm_lpips, "_get_tv_model_features", lambda net, pretrained=False: tv_features(net, False))
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)

    portable_config = _test_model_config(num_random=200)
    splatfacto_config = SplatfactoModelConfig(
        **{f.name: getattr(portable_config, f.name) for f in fields(SplatfactoModelConfig) if f.name != "_target"}
    )
    scene_box = SceneBox(aabb=torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]]))
    models = []
    for config in (splatfacto_config, portable_config):
        torch.manual_seed(0)
        models.append(config.setup(scene_box=scene_box, num_train_data=N_TRAIN, seed_points=seed_points))
    return models


@pytest.mark.parametrize("with_seed_colours", [False, True])
def test_same_initialisation_and_state_dict_keys_as_splatfacto(monkeypatch, with_seed_colours):
    g = torch.Generator().manual_seed(1)
    points = torch.rand(300, 3, generator=g) * 2 - 1
    colours = torch.randint(0, 256, (300 if with_seed_colours else 0, 3), generator=g, dtype=torch.uint8)
    splatfacto, portable = _splatfacto_pair(monkeypatch, (points, colours))

    reference = splatfacto.state_dict()
    ours = portable.state_dict()
    assert {k for k in reference if not k.startswith("lpips.")} == set(ours)
    for name, value in ours.items():
        torch.testing.assert_close(value, reference[name], rtol=0, atol=0, msg=name)


def test_checkpoints_cross_load_with_splatfacto(monkeypatch, trained_run):
    splatfacto, portable = _splatfacto_pair(monkeypatch, None)
    ckpt = torch.load(trained_run["checkpoint"], map_location="cpu")  # stock weights_only default
    model_state = {k[len("_model."):]: v for k, v in ckpt["pipeline"].items() if k.startswith("_model.")}
    n = trained_run["model"].num_points

    # Ours into splatfacto: every key is splatfacto's; only its LPIPS weights are not in ours.
    splatfacto_keys = set(splatfacto.state_dict())
    assert set(model_state) < splatfacto_keys
    assert all(k.startswith("lpips.") for k in splatfacto_keys - set(model_state))
    splatfacto.load_state_dict(dict(model_state), strict=False)
    assert splatfacto.num_points == n

    # Splatfacto's (LPIPS weights included) into ours, strictly.
    portable.load_state_dict(splatfacto.state_dict(), strict=True)
    assert portable.num_points == n
    for name, value in model_state.items():
        torch.testing.assert_close(portable.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_eval_setup_loads_the_checkpoint(trained_run):
    # eval_setup reads the checkpoint with torch.load's default, weights_only=True on torch >= 2.6.
    _, pipeline, checkpoint, _ = eval_setup(trained_run["config_path"], test_mode="val")
    assert checkpoint == trained_run["checkpoint"]
    assert isinstance(pipeline.model, PortableSplatfactoModel)
    for name, value in trained_run["model"].gauss_params.items():
        torch.testing.assert_close(pipeline.model.gauss_params[name], value.detach(), msg=name)
    camera, batch = pipeline.datamanager.next_eval_image(0)
    outputs = pipeline.model.get_outputs_for_camera(camera)
    assert outputs["rgb"].shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert torch.isfinite(outputs["depth"]).all()


def test_resumed_training_steps_the_loaded_gaussians(trained_run, tmp_path):
    """`ns-train --load-dir` continues the run: the optimisers hold the loaded Parameters (with
    their Adam moments) and move them, before any densification could rebind them."""
    ckpt = torch.load(trained_run["checkpoint"], map_location="cpu")
    saved = {k[len("_model.gauss_params."):]: v for k, v in ckpt["pipeline"].items()
             if k.startswith("_model.gauss_params.")}
    config = portable_trainer_config(tmp_path, Path(trained_run["pipeline"].datamanager.config.dataparser.data),
                                     "cpu", 5, "resumed")  # 5 more steps
    config.pipeline.model = _test_model_config(refine_every=1000)  # none of them refines
    config.load_dir = trained_run["checkpoint"].parent
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    model = trainer.pipeline.model
    assert trainer._start_step == ckpt["step"] + 1
    for name, param in model.gauss_params.items():
        optimizer = trainer.optimizers.optimizers[name]
        assert optimizer.param_groups[0]["params"][0] is param, name
        assert torch.equal(optimizer.state[param]["exp_avg"], ckpt["optimizers"][name]["state"][0]["exp_avg"]), name
    trainer.train()
    assert model.num_points == len(saved["means"])
    for name in ("means", "scales", "features_dc", "opacities"):
        assert not torch.allclose(model.gauss_params[name].detach(), saved[name]), f"{name} did not move"


def test_ns_export_gaussian_splat_writes_every_visible_gaussian(trained_run, tmp_path):
    # A fresh process: the torch.load allow-list must arrive through nerfstudio's plugin discovery.
    ns_export = [sys.executable, "-c", "from nerfstudio.scripts.exporter import entrypoint; entrypoint()"]
    run = subprocess.run(
        ns_export + ["gaussian-splat", "--load-config", str(trained_run["config_path"]), "--output-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    if run.returncode != 0 and "import open3d" in run.stderr:
        # nerfstudio's exporter imports open3d, whose wheel needs system libraries (libusb-1.0-0).
        pytest.skip("ns-export cannot import open3d here: " + run.stderr.strip().splitlines()[-1])
    assert run.returncode == 0, run.stderr
    header = (tmp_path / "splat.ply").read_bytes().split(b"end_header", 1)[0].decode()
    n_vertices = int(re.search(r"element vertex (\d+)", header).group(1))
    params = trained_run["model"].gauss_params
    finite = torch.stack([torch.isfinite(p.detach()).flatten(1).all(1) for p in params.values()]).all(0)
    # ns-export drops non-finite Gaussians and those below opacity 1/255 (logit -5.5373).
    visible = params["opacities"].detach().squeeze(-1) >= -5.5373
    assert n_vertices == int((finite & visible).sum()) > 0


def test_training_step_with_splatfacto_options_on_cpu():
    """Camera optimiser, bilateral grid, antialiased mode, depth while training and the SH
    ramp all render and back-propagate on the CPU."""
    from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
    from nerfstudio.cameras.cameras import Cameras

    torch.manual_seed(0)
    config = _test_model_config(
        num_random=300, rasterize_mode="antialiased", use_bilateral_grid=True,
        camera_optimizer=CameraOptimizerConfig(mode="SO3xR3"), output_depth_during_training=True,
    )
    scene_box = SceneBox(aabb=torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]]))
    model = config.setup(scene_box=scene_box, num_train_data=N_TRAIN)
    model.train()
    model.step, model.optimizers = 3 * config.sh_degree_interval, {}  # SH degree 3
    focal = 0.5 * IMAGE_SIZE / math.tan(0.5 * CAMERA_ANGLE_X)
    c2w = torch.from_numpy(_look_at_c2w(0.3, 0.4)[:3]).float()[None]
    camera = Cameras(camera_to_worlds=c2w, fx=focal, fy=focal, cx=IMAGE_SIZE / 2, cy=IMAGE_SIZE / 2,
                     width=IMAGE_SIZE, height=IMAGE_SIZE, metadata={"cam_idx": 1})
    outputs = model(camera)
    assert outputs["depth"].shape == (IMAGE_SIZE, IMAGE_SIZE, 1)
    batch = {"image": torch.from_numpy(_render_spheres(_look_at_c2w(0.3, 0.4))[..., :3].copy())}
    losses = model.get_loss_dict(outputs, batch, model.get_metrics_dict(outputs, batch))
    assert {"main_loss", "camera_opt_regularizer", "tv_loss"} <= set(losses)
    sum(losses.values()).backward()
    for name, params in model.get_param_groups().items():
        grads = [p.grad for p in params]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
    assert model.camera_optimizer.pose_adjustment.grad.abs().sum() > 0
    assert model.info["means2d"].absgrad.shape == model.info["means2d"].shape


def _eval_metrics(pipeline) -> dict:
    """Splatfacto-style image metrics of one evaluation view."""
    camera, batch = pipeline.datamanager.next_eval_image(0)
    pipeline.model.eval()
    try:
        outputs = pipeline.model.get_outputs_for_camera(camera)
        metrics, images = pipeline.model.get_image_metrics_and_images(outputs, batch)
    finally:
        pipeline.model.train()
    assert images["img"].shape == (IMAGE_SIZE, 2 * IMAGE_SIZE, 3)
    return metrics


@pytest.fixture
def fresh_lpips():
    """Forgets the process-wide LPIPS metric before and after the test."""
    portable_splatfacto.load_lpips.cache_clear()
    yield
    portable_splatfacto.load_lpips.cache_clear()


def test_metrics_omit_lpips_when_unavailable(monkeypatch, capsys, trained_run, fresh_lpips):
    def offline(timeout_s):
        raise OSError("no network")

    monkeypatch.setattr(portable_splatfacto, "_fetch_alexnet_weights", offline)
    for _ in range(2):
        assert set(_eval_metrics(trained_run["pipeline"])) == {"psnr", "ssim"}
    assert capsys.readouterr().out.count("LPIPS is unavailable") == 1


def test_metrics_include_lpips_from_cached_weights(monkeypatch, tmp_path, trained_run, fresh_lpips):
    from torchvision.models import AlexNet_Weights, alexnet

    def no_network(*args, **kwargs):
        raise AssertionError("LPIPS went to the network although its weights are cached")

    monkeypatch.setattr(portable_splatfacto.urllib.request, "urlopen", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = Path(torch.hub.get_dir()) / "checkpoints" / AlexNet_Weights.DEFAULT.url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    torch.save(alexnet().state_dict(), cached)  # untrained stand-in for the pretrained weights
    metrics = _eval_metrics(trained_run["pipeline"])
    assert set(metrics) == {"psnr", "ssim", "lpips"} and math.isfinite(metrics["lpips"])


def test_methods_are_registered_with_nerfstudio():
    from nerfstudio.configs.method_configs import all_descriptions, all_methods

    for spec in (splatfacto_portable, neuralgs):
        name = spec.config.method_name
        assert name in all_methods and all_descriptions[name] == spec.description
    assert splatfacto_portable.config.machine.device_type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("preset", ["neuralgs", "cpu"])
def test_stage_d_learning_rate_decays_to_the_presets_final_rate_over_its_steps(preset):
    from neuralgs_ns.method_configs import neuralgs_trainer, set_fine_tune_iterations
    from neuralgs_ns.models.neuralgs import PRESETS

    config = neuralgs_trainer(preset)
    set_fine_tune_iterations(config, 40)
    field = config.optimizers["field"]
    optimizer = field["optimizer"].setup(params=[torch.nn.Parameter(torch.zeros(1))])
    scheduler = field["scheduler"].setup().get_scheduler(optimizer=optimizer, lr_init=field["optimizer"].lr)
    rates = []
    for _ in range(40):  # as nerfstudio's trainer: an optimizer step, then the scheduler's
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    final = PRESETS[preset]["fine_tune_lr_final"]
    assert rates[19] == pytest.approx((field["optimizer"].lr * final) ** 0.5, rel=1e-6)  # geometric halfway
    assert rates[-1] == pytest.approx(final, rel=1e-6)


def test_painted_background_warning_names_the_fix():
    from neuralgs_ns.pipeline import painted_background_warning

    assert "--pipeline.model.background-color white" in painted_background_warning(torch.ones(3), "random")
    assert "--pipeline.model.background-color black" in painted_background_warning(torch.zeros(3), "random")
    assert painted_background_warning(torch.ones(3), "white") is None  # trains on the images' own background
    assert painted_background_warning(None, "random") is None  # opaque captures, or RGBA kept


@pytest.mark.parametrize("background", ["random", "white"])
def test_training_on_composited_images_with_a_random_background_warns(tmp_path, background):
    from nerfstudio.utils.rich_utils import CONSOLE

    config = portable_trainer_config(tmp_path, write_blender_scene(tmp_path / "scene"), "cpu", 1, "warn")
    config.pipeline.model = _test_model_config(background_color=background)
    with CONSOLE.capture() as captured:
        pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    assert pipeline.datamanager.train_dataparser_outputs.alpha_color is not None  # blender-data composites
    text = " ".join(captured.get().split())  # rich wraps long lines
    assert ("Warning: the training images come composited on white" in text) == (background == "random")

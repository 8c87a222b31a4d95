"""The procedural demo scene: a valid nerfstudio blender-data dataset with correct poses."""

import json

import imageio
import numpy as np
import pytest
import torch
from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

from neuralgs_ns.render import rasterize
from neuralgs_ns.scenes import (
    BOUNDING_RADIUS,
    CAMERA_RADIUS,
    ELEVATION_RANGE_DEG,
    LOOK_AT,
    demo_scene_objects,
    fibonacci_hemisphere,
    make_demo_scene,
    sample_surface,
)

RES = 64


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_demo_scene(tmp_path_factory.mktemp("demo") / "scene", n_train=5, n_val=2, resolution=RES)


def test_blender_dataparser_reads_every_split(scene):
    parser = BlenderDataParserConfig(data=scene).setup()
    for split, count in (("train", 5), ("val", 2), ("test", 2)):
        out = parser.get_dataparser_outputs(split)
        assert len(out.image_filenames) == count and all(f.is_file() for f in out.image_filenames)
        assert out.cameras.width.flatten().tolist() == [RES] * count
        image = imageio.v2.imread(out.image_filenames[0])
        assert image.shape == (RES, RES, 4) and image.dtype == np.uint8
        alpha = image[..., 3]
        assert alpha[0, 0] == 0 and alpha[RES // 2, RES // 2] == 255  # transparent corner, opaque centre
        assert 0.2 < (alpha > 127).mean() < 0.9
    assert (scene / "transforms_test.json").read_text() == (scene / "transforms_val.json").read_text()


def test_same_seed_same_bytes_other_seed_other_scene(scene, tmp_path):
    again = make_demo_scene(tmp_path / "again", n_train=5, n_val=2, resolution=RES)
    for f in sorted(scene.rglob("*")):
        if f.is_file():
            assert (again / f.relative_to(scene)).read_bytes() == f.read_bytes(), f
    other = make_demo_scene(tmp_path / "other", n_train=5, n_val=2, resolution=RES, seed=1)
    assert (other / "train" / "r_0.png").read_bytes() != (scene / "train" / "r_0.png").read_bytes()


def test_cameras_look_at_the_scene_from_the_upper_hemisphere(scene):
    frames = json.loads((scene / "transforms_train.json").read_text())["frames"]
    frames += json.loads((scene / "transforms_val.json").read_text())["frames"]
    positions = []
    for frame in frames:
        c2w = np.array(frame["transform_matrix"])
        rot, eye = c2w[:3, :3], c2w[:3, 3]
        np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-9)
        assert np.linalg.det(rot) == pytest.approx(1.0)
        assert abs(rot[2, 0]) < 1e-9  # camera x axis horizontal: no roll
        # OpenGL: the camera looks down its -z axis, at LOOK_AT.
        np.testing.assert_allclose(eye - CAMERA_RADIUS * rot[:, 2], LOOK_AT, atol=1e-9)
        positions.append(eye)
    elevation = np.degrees(np.arcsin((np.array(positions) - LOOK_AT)[:, 2] / CAMERA_RADIUS))
    assert ELEVATION_RANGE_DEG[0] <= elevation.min() and elevation.max() <= ELEVATION_RANGE_DEG[1]
    assert len({tuple(np.round(p, 6)) for p in positions}) == len(positions)  # val views are new views


def test_fibonacci_views_cover_the_band_evenly():
    dirs = fibonacci_hemisphere(200)
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0)
    # Equal-area band: each quarter of the azimuths holds about a quarter of the views.
    quarter = np.floor((np.arctan2(dirs[:, 1], dirs[:, 0]) + np.pi) / (np.pi / 2))
    assert np.all(np.abs(np.bincount(quarter.astype(int), minlength=4) - 50) <= 5)


def test_objects_fit_the_scene_box_and_the_traced_sphere():
    xyz, albedo = sample_surface(20000)
    assert xyz.shape == (20000, 3) and albedo.shape == (20000, 3)
    assert np.abs(xyz).max() < 1.2 and xyz[:, 2].min() > -1e-2
    assert np.linalg.norm(xyz - LOOK_AT, axis=1).max() < BOUNDING_RADIUS  # rays outside it are skipped
    assert 0.0 <= albedo.min() and albedo.max() <= 1.0


def test_sampled_points_normals_and_ray_hits_agree():
    # A ray shot at each sampled point along its inward normal, from just outside, hits it.
    rng = np.random.default_rng(0)
    for obj in demo_scene_objects():
        p = obj.sample(500, rng)
        n = obj.normal(p)
        np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-9)
        t = obj.intersect(p + 0.01 * n, -n)
        np.testing.assert_allclose(t, 0.01, atol=1e-4, err_msg=type(obj).__name__)


def _point_cloud_alphas(c2w_opengl, cams, flip):
    """Alpha [C, H, W] of the scene's surface as small opaque Gaussians, through `rasterize`.

    `flip` multiplies the camera axes of the given camera-to-world: (1, -1, -1) turns
    OpenGL (y up, looking down -z) into OpenCV (y down, looking down +z)."""
    xyz, albedo = sample_surface(30000)
    means = torch.tensor(xyz, dtype=torch.float32)
    n, c = len(means), len(c2w_opengl)
    c2w = torch.eye(4).repeat(c, 1, 1)
    c2w[:, :3, :4] = c2w_opengl
    c2w[:, :3, :3] *= torch.tensor(flip, dtype=torch.float32)
    ks = torch.zeros(c, 3, 3)
    ks[:, 0, 0], ks[:, 1, 1] = cams.fx[:, 0], cams.fy[:, 0]
    ks[:, 0, 2], ks[:, 1, 2], ks[:, 2, 2] = cams.cx[:, 0], cams.cy[:, 0], 1.0
    _, alphas, _ = rasterize(
        means, torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1), torch.full((n, 3), 0.012), torch.ones(n),
        torch.tensor(albedo, dtype=torch.float32), torch.linalg.inv(c2w), ks, RES, RES,
    )
    return alphas[..., 0].numpy()


def test_poses_match_the_images_silhouettes(scene):
    out = BlenderDataParserConfig(data=scene).setup().get_dataparser_outputs("train")
    image_alpha = np.stack([imageio.v2.imread(f)[..., 3] / 255.0 for f in out.image_filenames]) > 0.5

    def iou(flip):
        # The rasteriser's 0.3 px^2 screen-space blur widens every splat by about half a pixel:
        # count a pixel covered only where the splats are nearly opaque.
        covered = _point_cloud_alphas(out.cameras.camera_to_worlds, out.cameras, flip) > 0.9
        return (covered & image_alpha).sum(axis=(1, 2)) / (covered | image_alpha).sum(axis=(1, 2))

    assert iou((1.0, -1.0, -1.0)).min() > 0.8, iou((1.0, -1.0, -1.0))
    # The test can tell: a camera left in OpenGL axes sees nothing, a mirrored one the wrong shape.
    assert iou((1.0, 1.0, 1.0)).max() < 0.05
    assert iou((1.0, 1.0, -1.0)).max() < 0.7

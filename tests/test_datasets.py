"""Real dataset layouts: a COLMAP model (written here byte by byte, per COLMAP's documented
binary format) with RGB photos, read through nerfstudio's colmap dataparser; a .ply teacher in
COLMAP's frame moved into the dataparser's, view-dependent colour included; --downscale."""

import math
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from neuralgs_ns.compress.pipeline_run import (check_teacher_frame, dataparser_for, dataset_kind, dataset_views)
from neuralgs_ns.errors import InputFileError, NeuralGSError
from neuralgs_ns.formats import read_ply, write_ply
from neuralgs_ns.gaussians import _rotmat_to_quat
from test_gaussians import random_gaussians

N_VIEWS, WIDTH, HEIGHT, FOCAL = 12, 64, 48, 60.0


def _look_at(eye: np.ndarray, up: np.ndarray) -> np.ndarray:
    """World-to-camera [3, 4] in COLMAP's (OpenCV's) axes, looking at the origin."""
    forward = -eye / np.linalg.norm(eye)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rot = np.stack([right, down, forward])  # rows: camera axes in world coordinates
    return np.concatenate([rot, -(rot @ eye)[:, None]], axis=1)


def write_colmap_dataset(root, teacher, tilt: np.ndarray):
    """A COLMAP dataset of `teacher` (already in the tilted world): images/, sparse/0/*.bin."""
    (root / "images").mkdir(parents=True)
    (root / "sparse" / "0").mkdir(parents=True)
    up = tilt @ np.array([0.0, 0.0, 1.0])
    K = torch.tensor([[FOCAL, 0, WIDTH / 2], [0, FOCAL, HEIGHT / 2], [0, 0, 1]])
    white = torch.ones(1, 3)
    poses = []
    for i in range(N_VIEWS):
        angle = 2 * math.pi * i / N_VIEWS
        eye = tilt @ (5.0 * np.array([math.cos(angle), math.sin(angle), 0.6]))
        w2c = _look_at(eye, up)
        viewmat = torch.eye(4)
        viewmat[:3] = torch.from_numpy(w2c).float()
        rgb = teacher.render(viewmat[None], K[None], WIDTH, HEIGHT, backgrounds=white)[0][0].clamp(0, 1)
        Image.fromarray((rgb.numpy() * 255).round().astype(np.uint8)).save(root / "images" / f"img_{i:03d}.png")
        poses.append(w2c)
    with open(root / "sparse" / "0" / "cameras.bin", "wb") as f:
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<iiQQ", 1, 1, WIDTH, HEIGHT))  # camera 1, model 1 = PINHOLE
        f.write(struct.pack("<4d", FOCAL, FOCAL, WIDTH / 2, HEIGHT / 2))
    with open(root / "sparse" / "0" / "images.bin", "wb") as f:
        f.write(struct.pack("<Q", N_VIEWS))
        for i, w2c in enumerate(poses):
            qvec = _rotmat_to_quat(torch.from_numpy(w2c[:, :3]).float()).double().numpy()  # w, x, y, z
            f.write(struct.pack("<i4d3di", i + 1, *qvec, *w2c[:, 3], 1))
            f.write(f"img_{i:03d}.png".encode() + b"\0")
            f.write(struct.pack("<Q", 0))  # no 2D points
    with open(root / "sparse" / "0" / "points3D.bin", "wb") as f:
        points = teacher.means[:20].double().numpy()
        f.write(struct.pack("<Q", len(points)))
        for j, xyz in enumerate(points):
            f.write(struct.pack("<Q3d3BdQ", j + 1, *xyz, 128, 128, 128, 0.5, 0))
    return root


def _tilt() -> np.ndarray:
    """A rotation, so that COLMAP's world is not the dataparser's (whose up is +z)."""
    angle, axis = 0.8, np.array([0.6, 0.8, 0.0])
    skew = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * skew + (1 - math.cos(angle)) * skew @ skew


@pytest.fixture(scope="module")
def colmap_scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("colmap")
    g = random_gaussians(n=800, degree=3, seed=5)
    g.means = g.means * 0.6
    g.scales = g.scales + 1.5
    g.features_rest = g.features_rest * 0.5  # clearly view-dependent
    tilt = torch.from_numpy(_tilt()).float()
    from neuralgs_ns.gaussians import transform_gaussians

    g = transform_gaussians(g, torch.cat([tilt, torch.zeros(3, 1)], dim=1), 1.0)
    write_ply(g, root / "teacher.ply")
    return dict(data=write_colmap_dataset(root / "scene", g, _tilt()), ply=root / "teacher.ply")


def _frame_check(data, ply, downscale=None):
    outputs = dataparser_for(data, downscale).setup().get_dataparser_outputs("train")
    views = dataset_views(data, "train", downscale)
    return outputs, views, check_teacher_frame(read_ply(ply), True, outputs.dataparser_transform,
                                               float(outputs.dataparser_scale), [v[:4] for v in views],
                                               [v[4] for v in views], margin_db=3.0)


def test_a_colmap_folder_is_read_through_nerfstudio(colmap_scene):
    data = colmap_scene["data"]
    assert dataset_kind(data) == "colmap"
    train, val = dataset_views(data, "train"), dataset_views(data, "val")
    assert len(train) + len(val) == N_VIEWS and len(val) >= 1
    assert all((w, h) == (WIDTH, HEIGHT) for _, _, w, h, _ in train)


def test_a_colmap_frame_ply_is_moved_into_the_dataparser_frame_with_its_colours(colmap_scene):
    outputs, views, frame = _frame_check(colmap_scene["data"], colmap_scene["ply"])
    assert not torch.allclose(outputs.dataparser_transform[:3, :3], torch.eye(3), atol=0.1)  # a real rotation
    assert frame.choice == "moved by the dataparser transform" and frame.fits, frame.summary
    moved = frame.move(read_ply(colmap_scene["ply"]))
    white = torch.ones(1, 3)
    from neuralgs_ns.compress.pipeline_run import psnr
    from neuralgs_ns.gaussians import Gaussians

    def mean_psnr(g):
        return np.mean([psnr(g.render(vm[None], K[None], w, h, backgrounds=white)[0][0].clamp(0, 1), image)
                        for vm, K, w, h, image in views])

    rotated = mean_psnr(moved)
    assert rotated > 40.0  # the photos up to 8-bit rounding
    teacher = read_ply(colmap_scene["ply"])
    unrotated = Gaussians(moved.means, moved.scales, moved.quats, moved.opacities, moved.features_dc,
                          teacher.features_rest)
    assert mean_psnr(unrotated) < rotated - 10.0  # the SH bands must turn with the scene


def test_downscale_writes_the_images_nerfstudio_expects(colmap_scene):
    data = colmap_scene["data"]
    _, views, frame = _frame_check(data, colmap_scene["ply"], downscale=2)
    assert all((w, h) == (WIDTH // 2, HEIGHT // 2) for _, _, w, h, _ in views)
    assert all(v[4].shape[:2] == (HEIGHT // 2, WIDTH // 2) for v in views)
    assert sorted(p.name for p in (data / "images_2").iterdir()) == sorted(p.name for p in (data / "images").iterdir())
    assert frame.choice == "moved by the dataparser transform" and frame.fits, frame.summary


def test_bad_dataset_folders_give_one_line_errors(colmap_scene, tmp_path):
    with pytest.raises(InputFileError, match="not a dataset folder"):
        dataparser_for(tmp_path)
    with pytest.raises(NeuralGSError, match="--downscale must be 1 or more"):
        dataparser_for(colmap_scene["data"], 0)
    broken = tmp_path / "broken"
    (broken / "sparse" / "0").mkdir(parents=True)
    (broken / "sparse" / "0" / "cameras.bin").write_bytes(b"\0" * 8)
    (broken / "sparse" / "0" / "images.bin").write_bytes(b"\x05\0\0")
    with pytest.raises(InputFileError, match="unreadable COLMAP images file"):
        dataparser_for(broken)


def test_compress_trains_on_a_colmap_dataset(colmap_scene, tmp_path):
    from neuralgs_ns.codec import CompressedScene
    from neuralgs_ns.compress.run import compress

    report = compress(colmap_scene["ply"], tmp_path / "scene.ngs", data=colmap_scene["data"], preset="cpu",
                      device="cpu", fit_iterations=100, fine_tune_iterations=20, run_dir=tmp_path / "runs",
                      downscale=1)
    decoded = CompressedScene.load(report.output).decode()
    assert 0 < len(decoded) < 800
    # Evaluated on the dataset's held-out photos in the dataparser's frame: far above an empty render.
    assert report.psnr > 15.0, report


def test_downscale_without_data_is_refused(colmap_scene, tmp_path):
    from neuralgs_ns.compress.run import compress

    with pytest.raises(NeuralGSError, match="--downscale applies to --data"):
        compress(colmap_scene["ply"], tmp_path / "scene.ngs", downscale=2, run_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()

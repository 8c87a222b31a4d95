"""The Gaussians record's readers and writers: round trips and clear errors on bad files."""

import numpy as np
from numpy.lib.recfunctions import repack_fields
import pytest
import torch
from plyfile import PlyData, PlyElement

from neuralgs_ns.errors import InputFileError
from neuralgs_ns.gaussians import PARAM_NAMES, SPLATFACTO_PREFIX, Gaussians, load_teacher, read_ply, write_ply


def random_gaussians(n=300, degree=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2 - 1
    return Gaussians(torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g) - 4, torch.randn(n, 4, generator=g),
                     torch.randn(n, 1, generator=g), torch.randn(n, 3, generator=g), torch.randn(n, k, 3, generator=g))


def assert_same(a: Gaussians, b: Gaussians):
    for name in PARAM_NAMES:
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_ply_round_trip(tmp_path, degree):
    g = random_gaussians(degree=degree)
    write_ply(g, tmp_path / "s.ply")
    back = read_ply(tmp_path / "s.ply")
    assert back.sh_degree == degree
    assert_same(g, back)


def test_ply_matches_inria_layout(tmp_path):
    """f_rest is channel-major (all of red's coefficients, then green's, then blue's)."""
    g = random_gaussians(n=5, degree=1)
    write_ply(g, tmp_path / "s.ply")
    v = PlyData.read(str(tmp_path / "s.ply"))["vertex"]
    assert v["f_rest_0"][2] == pytest.approx(float(g.features_rest[2, 0, 0]))
    assert v["f_rest_3"][2] == pytest.approx(float(g.features_rest[2, 0, 1]))  # green, first coefficient
    assert v["f_rest_4"][2] == pytest.approx(float(g.features_rest[2, 1, 1]))
    assert {"nx", "ny", "nz", "opacity", "scale_2", "rot_3"} <= set(v.data.dtype.names)


def test_ply_without_normals_reads(tmp_path):
    g = random_gaussians(n=10, degree=0)
    write_ply(g, tmp_path / "s.ply")
    data = PlyData.read(str(tmp_path / "s.ply"))["vertex"].data
    keep = [n for n in data.dtype.names if n not in ("nx", "ny", "nz")]
    PlyData([PlyElement.describe(repack_fields(data[keep]), "vertex")]).write(str(tmp_path / "no_normals.ply"))
    assert_same(g, read_ply(tmp_path / "no_normals.ply"))


def test_checkpoint_run_dir_and_config(tmp_path):
    g = random_gaussians(n=20, degree=2)
    run = tmp_path / "run"
    (run / "nerfstudio_models").mkdir(parents=True)
    state = {SPLATFACTO_PREFIX + n: getattr(g, n) for n in PARAM_NAMES}
    torch.save({"step": 9, "pipeline": state}, run / "nerfstudio_models" / "step-000000009.ckpt")
    torch.save({"step": 29, "pipeline": state}, run / "nerfstudio_models" / "step-000000029.ckpt")
    (run / "config.yml").write_text("!!python/object:dummy {}\n")
    for path in (run, run / "config.yml", run / "nerfstudio_models" / "step-000000009.ckpt"):
        assert_same(g, load_teacher(path))


def one_line_error(path, fragment):
    with pytest.raises(InputFileError) as info:
        load_teacher(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and fragment in message, message


def test_bad_teachers(tmp_path):
    one_line_error(tmp_path / "missing.ply", "no such file")
    one_line_error(tmp_path / "missing_run", "no such file")
    (tmp_path / "empty_run").mkdir()
    one_line_error(tmp_path / "empty_run", "no checkpoint")

    # A triangle mesh.
    verts = np.array([(0, 0, 0), (1, 0, 0), (0, 1, 0)], dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    faces = np.array([([0, 1, 2],)], dtype=[("vertex_indices", "i4", (3,))])
    PlyData([PlyElement.describe(verts, "vertex"), PlyElement.describe(faces, "face")]).write(str(tmp_path / "mesh.ply"))
    one_line_error(tmp_path / "mesh.ply", "not a 3DGS PLY")

    write_ply(random_gaussians(n=50), tmp_path / "good.ply")
    data = (tmp_path / "good.ply").read_bytes()
    (tmp_path / "truncated.ply").write_bytes(data[: len(data) // 2])
    one_line_error(tmp_path / "truncated.ply", "not a readable PLY")

    nan = random_gaussians(n=50)
    nan.means[3, 1] = float("nan")
    nan.scales[7, 0] = float("inf")
    write_ply(nan, tmp_path / "nan.ply")
    one_line_error(tmp_path / "nan.ply", "2 of 50 Gaussians have NaN or Inf")

    write_ply(random_gaussians(n=0), tmp_path / "zero.ply")
    one_line_error(tmp_path / "zero.ply", "zero Gaussians")

    # A nerfacto-style checkpoint: a nerfstudio pipeline without Gaussian parameters.
    torch.save({"step": 1, "pipeline": {"_model.field.mlp.weight": torch.zeros(2)}}, tmp_path / "nerfacto.ckpt")
    one_line_error(tmp_path / "nerfacto.ckpt", "not a Gaussian-splatting checkpoint")
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint at all")
    one_line_error(tmp_path / "garbage.ckpt", "not a readable PyTorch checkpoint")


def test_ratios_divide_the_teacher_file_as_given(tmp_path):
    """A .ply without normals (as many exported splats are) is its bytes on disk, not the
    larger Inria PLY we would write; a checkpoint is the PLY ns-export writes of it."""
    from neuralgs_ns.gaussians import ply_size, teacher_bytes

    g = random_gaussians(50, degree=0)
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3"]
    values = torch.cat([g.means, g.features_dc, g.opacities, g.scales, g.quats], dim=1).numpy()
    table = np.empty(50, dtype=[(n, "<f4") for n in names])
    for i, n in enumerate(names):
        table[n] = values[:, i]
    path = tmp_path / "no-normals.ply"
    PlyData([PlyElement.describe(table, "vertex")]).write(str(path))
    loaded = load_teacher(path)
    assert teacher_bytes(path, loaded) == path.stat().st_size < ply_size(loaded)
    assert teacher_bytes(tmp_path / "run-dir-or-ckpt", loaded) == ply_size(loaded)


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_moved_gaussians_render_what_the_unmoved_do_from_the_moved_camera(degree):
    """transform_gaussians rotates the view-dependent colour with the scene: the moved scene
    seen by the moved camera is the original scene seen by the original camera, and leaving
    the SH bands unrotated would not be."""
    import math

    from neuralgs_ns.gaussians import _rotmat_to_quat, transform_gaussians

    g = random_gaussians(n=300, degree=degree, seed=2)
    g.scales = g.scales + 1.5
    g.features_rest = g.features_rest * 2.0  # strongly view-dependent
    angle = 0.9
    axis = torch.nn.functional.normalize(torch.tensor([0.3, -0.5, 0.8]), dim=0)
    skew = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = torch.eye(3) + math.sin(angle) * skew + (1 - math.cos(angle)) * skew @ skew
    transform = torch.cat([rot, torch.tensor([[0.4], [-1.0], [0.7]])], dim=1)
    moved = transform_gaussians(g, transform, 1.0)
    viewmat = torch.eye(4)
    viewmat[2, 3] = 6.0
    world_to_moved = torch.eye(4)
    world_to_moved[:3] = transform
    moved_viewmat = viewmat @ torch.linalg.inv(world_to_moved)
    K = torch.tensor([[60.0, 0, 32], [0, 60.0, 32], [0, 0, 1]])
    before = g.render(viewmat[None], K[None], 64, 64)[0]
    after = moved.render(moved_viewmat[None], K[None], 64, 64)[0]
    assert before.std() > 0.05
    assert (after - before).abs().max() < 2e-3
    unrotated = Gaussians(moved.means, moved.scales, moved.quats, moved.opacities, moved.features_dc, g.features_rest)
    assert (unrotated.render(moved_viewmat[None], K[None], 64, 64)[0] - before).abs().max() > 0.05

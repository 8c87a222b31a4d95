"""SPZ (version 2) and .splat exporters checked against readers that are not ours (gsply's SPZ
reader, a numpy dtype written from the .splat layout, plyfile), to within each format's
quantisation. The other SPZ versions and SOG: test_formats.py."""

import gzip
import math
import struct

import gsply
import numpy as np
import pytest
import torch
from plyfile import PlyData

from neuralgs_ns.errors import NeuralGSError
from neuralgs_ns.formats import EXPORT_FORMATS, spz_bytes, write_gaussians
from neuralgs_ns.gaussians import SH_C0, Gaussians

EPS = 1e-5  # float32 arithmetic on top of the format's own rounding


def random_gaussians(n=400, degree=3, seed=0, extent=1.0):
    """Gaussians whose every value lies inside SPZ's representable ranges, so the only error
    left is rounding: log scales in [-10, 5.94], DC in +-0.5 / 0.15, SH rest in [-1, 0.99]."""
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2 - 1

    def uniform(*shape, lo, hi):
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    return Gaussians(
        means=uniform(n, 3, lo=-extent, hi=extent),
        scales=uniform(n, 3, lo=-9.5, hi=5.5),
        quats=torch.randn(n, 4, generator=g) * 3,  # any norm, w of either sign
        opacities=torch.randn(n, 1, generator=g) * 3,
        features_dc=uniform(n, 3, lo=-3.2, hi=3.2),
        features_rest=uniform(n, k, 3, lo=-0.9, hi=0.9),
    )


def np_(t):
    return t.detach().numpy().astype(np.float64)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def unit_quats(g: Gaussians):
    q = np_(g.quats)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


@pytest.fixture(scope="module", autouse=True)
def warm_gsply(tmp_path_factory):
    """gsply JIT-compiles its SPZ decoder on first use (seconds, once per install): pay it
    here rather than inside the first test."""
    path = tmp_path_factory.mktemp("warm") / "w.spz"
    path.write_bytes(spz_bytes(random_gaussians(n=2, degree=0), version=2))
    gsply.read_spz(path)


def spz_header(path):
    magic, version, n, degree, bits, flags, reserved = struct.unpack("<IIIBBBB", gzip.decompress(path.read_bytes())[:16])
    assert (magic, version, flags, reserved) == (0x5053474E, 2, 0, 0)
    return n, degree, bits


def assert_spz_matches(g: Gaussians, back, bits: int):
    """`back` (gsply's decode) equals `g` to within SPZ v2's rounding of each attribute."""
    # Exact: scaling by 2^bits and back is exact in float32, so rounding is the only error.
    assert np.abs(back.means - np_(g.means)).max() <= 0.5 / 2**bits
    assert np.abs(back.scales - np_(g.scales)).max() <= 0.5 / 16 + EPS  # steps of 1/16
    assert np.abs(sigmoid(back.opacities.astype(np.float64)) - sigmoid(np_(g.opacities[:, 0]))).max() <= 0.5 / 255 + EPS
    assert np.abs(back.sh0 - np_(g.features_dc)).max() <= 0.5 / (0.15 * 255) + EPS

    # Rotations: q and -q are one rotation; SPZ keeps w >= 0 and stores x, y, z to 1/127.5.
    q = unit_quats(g)
    q *= np.where(q[:, :1] < 0, -1, 1)
    xyz_err = 0.5 / 127.5
    assert np.abs(back.quats[:, 1:] - q[:, 1:]).max() <= xyz_err + EPS
    # w = sqrt(1 - |xyz|^2) inherits |w'^2 - w^2| = ||v'|^2 - |v|^2| <= 2|v||e| + |e|^2.
    e = math.sqrt(3) * xyz_err
    v = np.linalg.norm(q[:, 1:], axis=1)
    assert (np.abs(back.quats[:, 0] ** 2 - q[:, 0] ** 2) <= 2 * v * e + e * e + EPS).all()

    k = g.features_rest.shape[1]
    if k == 0:
        assert back.shN is None or back.shN.size == 0
        return
    # byte = round(x * 128) + 128, moved to the centre of its bucket: 8 wide (5 bits) for the
    # degree-1 coefficients, 16 wide (4 bits) above, as Niantic's packer does.
    bucket = np.where(np.arange(k) < 3, 8, 16)[None, :, None]
    sh_bytes = back.shN.astype(np.float64) * 128 + 128
    assert np.array_equal(sh_bytes, np.round(sh_bytes))
    assert (sh_bytes % bucket == 0).all()
    err = np.abs(back.shN - np_(g.features_rest))
    assert (err <= (bucket / 2 + 0.5) / 128 + EPS).all()


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_spz_reads_back_through_gsply(tmp_path, degree):
    g = random_gaussians(degree=degree, seed=degree)
    path = tmp_path / "s.spz"
    write_gaussians(g, path, spz_version=2)
    n, header_degree, bits = spz_header(path)
    assert (n, header_degree, bits) == (len(g), degree, 12)  # the reference's 12 bits when it fits
    back = gsply.read_spz(path)
    assert back.means.shape == (len(g), 3)
    assert_spz_matches(g, back, bits)


@pytest.mark.parametrize("max_coord, bits", [(2047.9, 12), (2048.0, 11), (-5000.0, 10), (3e6, 1)])
def test_spz_fractional_bits_drop_for_large_scenes(tmp_path, max_coord, bits):
    """24-bit signed fixed point holds |x| * 2^bits <= 2^23 - 1: bits fall as the scene grows."""
    g = random_gaussians(n=200, degree=1, extent=abs(max_coord) * 0.9)
    g.means[17, 1] = max_coord
    path = tmp_path / "big.spz"
    write_gaussians(g, path, spz_version=2)
    assert spz_header(path)[2] == bits
    assert_spz_matches(g, gsply.read_spz(path), bits)


def test_spz_too_large_or_non_finite_scene_fails_cleanly(tmp_path):
    g = random_gaussians(n=20, degree=0)
    g.means[3, 0] = 5e6  # beyond 2^22, even 1 fractional bit overflows
    path = tmp_path / "huge.spz"
    with pytest.raises(NeuralGSError, match="24-bit") as err:
        write_gaussians(g, path)
    assert str(path) in str(err.value)
    g.means[3, 0] = float("nan")
    with pytest.raises(NeuralGSError, match="NaN"):
        write_gaussians(g, path)
    assert list(tmp_path.iterdir()) == []


def test_spz_agrees_with_gsply_writer(tmp_path):
    """gsply's own SPZ writer (v3, 8-bit SH) and ours, both decoded by gsply, give the same
    scene: same axes, SH order and colour scaling, differing only by rounding."""
    g = random_gaussians(n=300, degree=3, seed=7)
    data = gsply.GSData.from_arrays(np_(g.means).astype(np.float32), np_(g.scales).astype(np.float32),
                                    np_(g.quats).astype(np.float32), np_(g.opacities[:, 0]).astype(np.float32),
                                    np_(g.features_dc).astype(np.float32),
                                    np_(g.features_rest).astype(np.float32), format="ply")
    gsply.write_spz(tmp_path / "theirs.spz", data)
    write_gaussians(g, tmp_path / "ours.spz", spz_version=2)
    theirs, ours = gsply.read_spz(tmp_path / "theirs.spz"), gsply.read_spz(tmp_path / "ours.spz")
    assert np.abs(ours.means - theirs.means).max() <= 2 * 0.5 / 2**12 + EPS
    assert np.abs(ours.sh0 - theirs.sh0).max() <= 2 * 0.5 / (0.15 * 255) + EPS
    assert np.abs(ours.shN - theirs.shN).max() <= (8 + 0.5 + 0.5) / 128 + EPS
    # Loose: v2 keeps only x, y, z, so w = sqrt(1 - |xyz|^2) loses up to ~0.12 where w is near
    # 0 (bounded exactly against the input in assert_spz_matches); this only rules out a flip.
    dots = np.abs((ours.quats * theirs.quats).sum(axis=1))
    assert dots.min() > 0.98


# --- antimatter15 .splat ----------------------------------------------------------------

# The layout, written out here rather than imported: position f32 x3, scale f32 x3, RGBA u8,
# quaternion u8 x4 (wxyz, byte = q * 128 + 128).
SPLAT_RECORD = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("sx", "<f4"), ("sy", "<f4"), ("sz", "<f4"),
                         ("r", "u1"), ("g", "u1"), ("b", "u1"), ("a", "u1"),
                         ("qw", "u1"), ("qx", "u1"), ("qy", "u1"), ("qz", "u1")])


def test_splat_layout_values_and_order(tmp_path):
    g = random_gaussians(n=500, degree=2, seed=3)
    g.features_dc[:5] *= 10  # colours far outside [0, 1]: clipped
    path = tmp_path / "s.splat"
    write_gaussians(g, path)
    raw = path.read_bytes()
    assert SPLAT_RECORD.itemsize == 32 and len(raw) == 32 * len(g)
    rec = np.frombuffer(raw, dtype=SPLAT_RECORD)

    # Which input Gaussian each record is: positions are exact float32 and all distinct.
    where = {tuple(p): i for i, p in enumerate(g.means.numpy())}
    src = np.array([where[(r["x"], r["y"], r["z"])] for r in rec])
    assert sorted(src) == list(range(len(g)))

    # Sorted by decreasing volume * opacity, antimatter15's convert.py key.
    key = np.exp(np_(g.scales).sum(axis=1)) * sigmoid(np_(g.opacities[:, 0]))
    assert (np.diff(key[src]) <= 1e-5 * key[src][1:]).all()  # float32 ties aside

    scales = np.stack([rec["sx"], rec["sy"], rec["sz"]], axis=1)
    np.testing.assert_allclose(scales, np.exp(np_(g.scales))[src], rtol=1e-5)
    rgb = np.stack([rec["r"], rec["g"], rec["b"]], axis=1) / 255
    assert np.abs(rgb - np.clip(0.5 + SH_C0 * np_(g.features_dc), 0, 1)[src]).max() <= 0.5 / 255 + EPS
    assert np.abs(rec["a"] / 255 - sigmoid(np_(g.opacities[:, 0]))[src]).max() <= 0.5 / 255 + EPS
    # (byte - 128) / 128 spans [-1, 127/128]: the unit quaternion clipped to that, then rounded.
    q = (np.stack([rec["qw"], rec["qx"], rec["qy"], rec["qz"]], axis=1).astype(np.float64) - 128) / 128
    assert np.abs(q - np.clip(unit_quats(g), -1, 127 / 128)[src]).max() <= 0.5 / 128 + EPS


# --- write_gaussians --------------------------------------------------------------------

def test_write_gaussians_ply_reads_with_plyfile(tmp_path):
    g = random_gaussians(n=50, degree=1)
    path = tmp_path / "s.ply"
    write_gaussians(g, path)
    v = PlyData.read(str(path))["vertex"]
    assert len(v) == 50
    np.testing.assert_array_equal(v["y"], g.means[:, 1].numpy())
    np.testing.assert_array_equal(v["opacity"], g.opacities[:, 0].numpy())
    np.testing.assert_array_equal(v["rot_0"], g.quats[:, 0].numpy())
    np.testing.assert_array_equal(v["f_rest_4"], g.features_rest[:, 1, 1].numpy())  # channel-major


@pytest.mark.parametrize("name", ["s.ply", "s.spz", "s.splat", "S.SPLAT", "s.sog"])
def test_write_gaussians_dispatches_by_suffix(tmp_path, name):
    g = random_gaussians(n=10, degree=0)
    write_gaussians(g, tmp_path / name)
    head = (tmp_path / name).read_bytes()
    expected = {".ply": head.startswith(b"ply\n"), ".spz": head[:4] == b"NGSP", ".splat": len(head) == 320,
                ".sog": head[:2] == b"PK"}
    assert expected[(tmp_path / name).suffix.lower()]
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left
    assert set(EXPORT_FORMATS) == {".ply", ".spz", ".splat", ".sog"}


@pytest.mark.parametrize("name", ["scene.obj", "scene"])
def test_write_gaussians_rejects_unknown_format(tmp_path, name):
    path = tmp_path / name
    with pytest.raises(NeuralGSError, match="unsupported output format") as err:
        write_gaussians(random_gaussians(n=5, degree=0), path)
    assert str(path) in str(err.value) and f"'{path.suffix}'" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_write_gaussians_missing_directory(tmp_path):
    path = tmp_path / "no_such_dir" / "s.spz"
    with pytest.raises(NeuralGSError, match="does not exist") as err:
        write_gaussians(random_gaussians(n=5, degree=0), path)
    assert str(path) in str(err.value)
    assert list(tmp_path.iterdir()) == []

"""Every written format read back by an implementation that is not ours (gsply for SPZ,
PlayCanvas's splat-transform for SPZ, SOG and .splat), by our own readers, and files that
those tools write loading as teachers; each compared with the Gaussians written, to within
the format's quantisation.

splat-transform is a node program: tests that need it are skipped, saying so, where it is not
installed (CI installs it; see SPLAT_TRANSFORM_INSTALL)."""

from __future__ import annotations

import gzip
import json
import math
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import gsply
import numpy as np
import pytest
import torch

from neuralgs_ns import formats
from neuralgs_ns.cli import main as neuralgs_cli
from neuralgs_ns.errors import InputFileError, NeuralGSError
from neuralgs_ns.formats import sog as sog_format
from neuralgs_ns.gaussians import SH_C0, Gaussians, sh_rotation

REPO = Path(__file__).resolve().parents[1]
SPLAT_TRANSFORM_INSTALL = "npm install --prefix .ci/node @playcanvas/splat-transform@2.7.1"
EPS = 1e-5  # float32 arithmetic on top of a format's own rounding
SPZ_COLOR_SCALE = 0.15  # SPZ's DC byte = dc * 0.15 * 255 + 127.5


def random_gaussians(n=400, degree=3, seed=0) -> Gaussians:
    """Values inside SPZ's representable ranges, so rounding is the only error: log scales in
    [-10, 5.94], DC in +-0.5 / 0.15, SH rest in [-1, 0.99]. The SH rest vectors are 12 patterns
    plus a little noise, as a palette format (SOG) can hold them."""
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2 - 1

    def uniform(*shape, lo, hi):
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    patterns = uniform(12, k, 3, lo=-0.85, hi=0.85)
    rest = patterns[torch.randint(0, 12, (n,), generator=g)] + uniform(n, k, 3, lo=-0.005, hi=0.005)
    return Gaussians(means=uniform(n, 3, lo=-2.0, hi=2.0), scales=uniform(n, 3, lo=-9.5, hi=5.5),
                     quats=torch.randn(n, 4, generator=g) * 3,  # any norm, w of either sign
                     opacities=torch.randn(n, 1, generator=g) * 3, features_dc=uniform(n, 3, lo=-3.2, hi=3.2),
                     features_rest=rest)


def unit(q: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(q.double(), dim=-1)


def assert_same_rotations(a: torch.Tensor, b: torch.Tensor, min_dot: float):
    """q and -q are one rotation: |<unit a, unit b>| near 1."""
    dots = (unit(a) * unit(b)).sum(-1).abs()
    assert dots.min() >= min_dot, float(dots.min())


def assert_opacities_close(a: Gaussians, b: Gaussians, steps: float):
    err = (a.activated_opacities.double() - b.activated_opacities.double()).abs().max()
    assert err <= steps / 255 + EPS, float(err)


@pytest.fixture(scope="module")
def splat_transform():
    """Runs `splat-transform SRC DST [options]` (the repo's .ci/node install, else PATH)."""
    local = REPO / ".ci/node/node_modules/.bin/splat-transform"
    exe = str(local) if local.exists() else shutil.which("splat-transform")
    if exe is None or shutil.which("node") is None:
        pytest.skip(f"PlayCanvas splat-transform (the independent SOG/SPZ reader) is not installed: "
                    f"{SPLAT_TRANSFORM_INSTALL}")

    def run(src: Path, dst: Path, *options: str) -> Path:
        done = subprocess.run([exe, "-q", "-w", *options, str(src), str(dst)], capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0 and dst.exists(), done.stdout + done.stderr
        return dst

    return run


# --- Niantic SPZ --------------------------------------------------------------------------

def assert_spz_close(g: Gaussians, back: Gaussians, version: int, bits: int = 12, alpha_steps: float = 0.5):
    """`back` equals `g` to within SPZ's rounding of each attribute. `alpha_steps`: the
    reference decoder clamps alpha bytes to [1, 254], a whole step at the ends."""
    assert len(back) == len(g) and back.sh_degree == g.sh_degree
    assert (back.means - g.means).abs().max() <= 0.5 / 2**bits  # scaling by 2^bits is exact
    assert (back.scales - g.scales).abs().max() <= 0.5 / 16 + EPS
    assert (back.features_dc - g.features_dc).abs().max() <= 0.5 / (SPZ_COLOR_SCALE * 255) + EPS
    assert_opacities_close(g, back, alpha_steps)
    q = unit(g.quats)
    if version >= 3:  # smallest three: 9-bit magnitudes of components up to sqrt(1/2)
        aligned = unit(back.quats) * torch.sign((unit(back.quats) * q).sum(-1, keepdim=True))
        largest = q.abs().argmax(-1, keepdim=True)
        stored = torch.ones_like(q, dtype=torch.bool).scatter(-1, largest, False)
        assert (aligned - q)[stored].abs().max() <= math.sqrt(0.5) * 0.5 / 511 + EPS
        assert_same_rotations(back.quats, q, 1 - 1e-5)
    else:  # x, y, z to 1/127.5 with w >= 0; w = sqrt(1 - |xyz|^2) inherits 2|v||e| + |e|^2
        q = q * torch.where(q[:, :1] < 0, -1.0, 1.0)
        assert (back.quats[:, 1:] - q[:, 1:]).abs().max() <= 0.5 / 127.5 + EPS
        e = math.sqrt(3) * 0.5 / 127.5
        v = q[:, 1:].norm(dim=-1)
        assert ((back.quats[:, 0].double() ** 2 - q[:, 0] ** 2).abs() <= 2 * v * e + e * e + EPS).all()
    if g.sh_degree:
        # byte = round(x * 128) + 128, moved to the centre of its bucket: 8 wide (5 bits) for
        # degree 1, 16 wide (4 bits) above, as Niantic's packer does.
        bucket = torch.where(torch.arange(g.features_rest.shape[1]) < 3, 8.0, 16.0)[None, :, None]
        assert ((back.features_rest - g.features_rest).abs() <= (bucket / 2 + 0.5) / 128 + EPS).all()



def flip_yz(g: Gaussians) -> Gaussians:
    """The scene turned half a turn about x: (x, y, z) -> (x, -y, -z). splat-transform reads
    and writes SPZ as Niantic's RUB frame and the PLY as RDF, so its files are this turn of
    ours (which stores coordinates as given, as the reference library does by default). The SH
    signs come from our renderer's own basis (`sh_rotation`), checked to be a pure sign flip."""
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
    rest = g.features_rest
    if g.sh_degree:
        matrix = sh_rotation(flip, g.sh_degree)
        signs = matrix.diagonal().round()
        assert torch.allclose(matrix, torch.diag(signs), atol=1e-4)
        rest = rest * signs[None, :, None]
    return Gaussians(means=g.means * torch.tensor([1.0, -1.0, -1.0]), scales=g.scales,
                     quats=g.quats * torch.tensor([1.0, 1.0, -1.0, -1.0]), opacities=g.opacities,
                     features_dc=g.features_dc, features_rest=rest)


def test_spz_containers_and_default_version():
    """Version 4 (the reference library's default): a plain 32-byte header and one zstd stream
    per attribute; versions 2 and 3: gzip of a 16-byte header and one stream."""
    g = random_gaussians(n=50, degree=1)
    data = formats.spz_bytes(g)
    magic, version, n, degree, bits, flags, streams, toc = struct.unpack("<IIIBBBBI", data[:20])
    assert (magic, version, n, degree, bits, flags, streams, toc) == (0x5053474E, 4, 50, 1, 12, 0, 6, 32)
    assert formats.SPZ_DEFAULT_VERSION == 4
    assert struct.unpack("<6B", data[22:28]) == (0,) * 6  # reserved
    degree0 = formats.spz_bytes(random_gaussians(n=50, degree=0))
    assert struct.unpack("<B", degree0[15:16])[0] == 5  # no SH: its empty stream is left out
    for version in (2, 3):
        header = struct.unpack("<IIIBBBB", gzip.decompress(formats.spz_bytes(g, version=version))[:16])
        assert header == (0x5053474E, version, 50, 1, 12, 0, 0)
    with pytest.raises(NeuralGSError, match="version 5"):
        formats.spz_bytes(g, version=5)


@pytest.mark.parametrize("version", [2, 3, 4])
@pytest.mark.parametrize("degree", [0, 1, 3])
def test_spz_round_trip(tmp_path, version, degree):
    g = random_gaussians(degree=degree, seed=degree)
    path = tmp_path / "s.spz"
    formats.write_gaussians(g, path, spz_version=version)
    assert_spz_close(g, formats.read_spz(path), version)


@pytest.mark.parametrize("version", [2, 3, 4])
def test_spz_read_by_gsply(tmp_path, version):
    g = random_gaussians(degree=3, seed=version)
    path = tmp_path / "s.spz"
    path.write_bytes(formats.spz_bytes(g, version=version))
    assert_spz_close(g, formats.read_spz_gsply(path), version)


@pytest.mark.parametrize("version", [2, 3, 4])
def test_spz_read_by_splat_transform(tmp_path, splat_transform, version):
    """Niantic's own decoder (splat-transform runs it as WebAssembly), its PLY read by ours."""
    g = random_gaussians(degree=3, seed=10 + version)
    formats.write_gaussians(g, tmp_path / "s.spz", spz_version=version)
    theirs = formats.read_ply(splat_transform(tmp_path / "s.spz", tmp_path / "theirs.ply"))
    assert_spz_close(g, flip_yz(theirs), version, alpha_steps=1)


@pytest.mark.parametrize("version", [3, 4])
def test_spz_written_by_splat_transform_loads_as_a_teacher(tmp_path, splat_transform, version):
    g = random_gaussians(degree=2, seed=20 + version)
    formats.write_ply(g, tmp_path / "s.ply")
    splat_transform(tmp_path / "s.ply", tmp_path / "theirs.spz", "--spz-version", str(version))
    assert_spz_close(g, flip_yz(formats.load_teacher(tmp_path / "theirs.spz")), version)


def test_spz_bad_files_are_one_line_errors(tmp_path):
    good = formats.spz_bytes(random_gaussians(n=100, degree=1))
    legacy = formats.spz_bytes(random_gaussians(n=100, degree=1), version=3)
    cases = {"garbage.spz": (b"not an spz file at all", "not an SPZ file"),
             "cut.spz": (good[: len(good) // 2], "damaged SPZ v4"),
             "cut-gzip.spz": (legacy[: len(legacy) // 2], "not a readable SPZ file"),
             "short.spz": (gzip.compress(gzip.decompress(legacy)[:-40]), "truncated SPZ"),
             "degree4.spz": (good[:12] + b"\x04" + good[13:], "SH degree 4")}
    for name, (data, fragment) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputFileError) as err:
            formats.load_teacher(tmp_path / name)
        assert "\n" not in str(err.value) and str(tmp_path / name) in str(err.value) and fragment in str(err.value)


# --- PlayCanvas SOG -----------------------------------------------------------------------

def sog_meta(path: Path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("meta.json"))


def in_file_order(g: Gaussians) -> Gaussians:
    """`g` in the order our SOG writer stores it (Morton order of the positions)."""
    return g.subset(torch.from_numpy(sog_format.morton_order(g.means)))


def matched_by_position(g: Gaussians, back: Gaussians) -> Gaussians:
    """`g` reordered to `back`'s order, each Gaussian matched to its nearest decoded position."""
    nearest = torch.cdist(back.means.double(), g.means.double()).argmin(dim=1)
    assert sorted(nearest.tolist()) == list(range(len(g)))
    return g.subset(nearest)


def assert_codebook_entries(values: torch.Tensor, decoded: torch.Tensor, codebook, nearest: bool):
    """Each decoded value is an entry of the codebook, and with `nearest` the one nearest to
    its value (our writer labels after its last k-means update; splat-transform's before)."""
    book = torch.tensor(codebook, dtype=torch.float32)
    assert torch.isin(decoded, book).all()
    if nearest:
        closest = (values.double()[..., None] - book.double()).abs().min(-1).values
        assert ((decoded.double() - values.double()).abs() <= closest + EPS).all()


def assert_sog_close(g: Gaussians, back: Gaussians, meta: dict, sh_tolerance: float, ours: bool = True):
    """`back` (in `g`'s order) equals `g` to within SOG's quantisation: positions to 16 bits
    of sign(x) * log(|x| + 1) over meta's range (an error of d there is at most
    (|x| + 1) e^d d in x), rotations to 8 bits of the three smallest components, opacities
    to 8 bits, scales and DC colours to their codebooks' entries, SH rest to the palette (a
    pattern's centroid, itself through the SH codebook: `sh_tolerance`). Our writer rounds
    to the nearest step and entry; splat-transform's (ours=False) truncates, to a whole step."""
    assert len(back) == len(g) and back.sh_degree == g.sh_degree
    steps = 0.5 if ours else 1.0
    span = torch.tensor(meta["means"]["maxs"], dtype=torch.float64) - torch.tensor(meta["means"]["mins"])
    d = steps * span / 65535 + 1e-9
    assert ((back.means.double() - g.means).abs() <= (g.means.double().abs() + 1) * d.exp() * d + EPS).all()
    assert_same_rotations(back.quats, g.quats, 1 - 1e-4)
    q, aligned = unit(g.quats), unit(back.quats)
    aligned = aligned * torch.sign((aligned * q).sum(-1, keepdim=True))
    stored = torch.ones_like(q, dtype=torch.bool).scatter(-1, q.abs().argmax(-1, keepdim=True), False)
    assert (aligned - q)[stored].abs().max() <= math.sqrt(2) * steps / 255 + EPS
    assert_opacities_close(g, back, steps)
    # splat-transform's WebP encoder drops the colour of fully transparent pixels: the DC of
    # Gaussians whose opacity byte is 0 (invisible ones) is lost in its files; ours keep it.
    shown = torch.ones(len(g), dtype=torch.bool) if ours else back.activated_opacities > 0.5 / 255
    for name, codebook in (("scales", "scales"), ("features_dc", "sh0")):
        values, decoded = getattr(g, name)[shown], getattr(back, name)[shown]
        assert_codebook_entries(values, decoded, meta[codebook]["codebook"], nearest=ours)
        # 256 entries over the values' range: an error of a few hundredths of it at most.
        assert (decoded - values).abs().max() <= (values.max() - values.min()) / 100, name
    if g.sh_degree:
        assert meta["shN"]["bands"] == g.sh_degree
        assert (back.features_rest - g.features_rest).abs().max() <= sh_tolerance
    else:
        assert "shN" not in meta and back.features_rest.shape[1] == 0


# A member of a pattern's cloud (0.01 wide) is within 0.01 of any palette centroid of that
# cloud, and the centroid is stored to within half a step of a 256-entry codebook (~0.0035).
SOG_SH_TOLERANCE = 0.015


def test_sog_layout(tmp_path):
    """A zip of meta.json and lossless WebP images (RIFF ... VP8L), the images a multiple of 4
    wide and high, the SH palette 64 entries a row of one pixel per coefficient."""
    from PIL import Image

    g = random_gaussians(n=1500, degree=2)
    path = tmp_path / "s.sog"
    formats.write_gaussians(g, path)
    meta = sog_meta(path)
    assert meta["version"] == 2 and meta["count"] == 1500
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        assert names == {"meta.json", "means_l.webp", "means_u.webp", "quats.webp", "scales.webp", "sh0.webp",
                         "shN_centroids.webp", "shN_labels.webp"}
        assert all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())
        for name in names - {"meta.json"}:
            data = zf.read(name)
            assert data[:4] == b"RIFF" and data[8:16] == b"WEBPVP8L", name
            with Image.open(zf.open(name)) as image:
                w, h = image.size
            if name == "shN_centroids.webp":
                assert (w, h) == (64 * 8, math.ceil(meta["shN"]["count"] / 64))
            else:
                assert w % 4 == 0 and h % 4 == 0 and w * h >= 1500, name
    assert meta["shN"]["count"] == sog_format.palette_size(1500) == 1024
    assert len(meta["scales"]["codebook"]) == len(meta["sh0"]["codebook"]) == len(meta["shN"]["codebook"]) == 256
    assert path.read_bytes() == formats.sog_bytes(g)  # reproducible


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_sog_round_trip(tmp_path, degree):
    g = random_gaussians(n=2000, degree=degree, seed=degree)
    path = tmp_path / "s.sog"
    formats.write_gaussians(g, path)
    assert_sog_close(in_file_order(g), formats.read_sog(path), sog_meta(path), sh_tolerance=SOG_SH_TOLERANCE)


@pytest.mark.parametrize("degree", [0, 3])
def test_sog_read_by_splat_transform(tmp_path, splat_transform, degree):
    g = random_gaussians(n=2000, degree=degree, seed=30 + degree)
    formats.write_gaussians(g, tmp_path / "s.sog")
    theirs = formats.read_ply(splat_transform(tmp_path / "s.sog", tmp_path / "theirs.ply"))
    assert_sog_close(in_file_order(g), theirs, sog_meta(tmp_path / "s.sog"), sh_tolerance=SOG_SH_TOLERANCE)
    ours = formats.read_sog(tmp_path / "s.sog")
    for name in ("means", "scales", "opacities", "features_dc", "features_rest"):
        assert torch.allclose(getattr(theirs, name), getattr(ours, name), rtol=1e-6, atol=1e-6), name
    assert_same_rotations(theirs.quats, ours.quats, 1 - 1e-9)


def test_sog_written_by_splat_transform_loads_as_a_teacher(tmp_path, splat_transform):
    """splat-transform's own codebooks, palette and order: Gaussians matched by position."""
    g = random_gaussians(n=300, degree=1, seed=40)
    formats.write_ply(g, tmp_path / "s.ply")
    splat_transform(tmp_path / "s.ply", tmp_path / "theirs.sog", "-g", "cpu", "--max-workers", "0")
    back = formats.load_teacher(tmp_path / "theirs.sog")
    assert_sog_close(matched_by_position(g, back), back, sog_meta(tmp_path / "theirs.sog"), sh_tolerance=SOG_SH_TOLERANCE,
                     ours=False)


def test_sog_bad_files_are_one_line_errors(tmp_path):
    good = formats.sog_bytes(random_gaussians(n=100, degree=1))

    def rezipped(drop=(), meta=None):
        buf_path = tmp_path / "tmp.zip"
        with zipfile.ZipFile(tmp_path / "good.sog") as src, zipfile.ZipFile(buf_path, "w") as dst:
            for name in src.namelist():
                if name not in drop:
                    dst.writestr(name, json.dumps(meta).encode() if meta and name == "meta.json" else src.read(name))
        return buf_path.read_bytes()

    (tmp_path / "good.sog").write_bytes(good)
    old_meta = {k: v for k, v in sog_meta(tmp_path / "good.sog").items() if k != "version"}
    cases = {"garbage.sog": (b"PK not really", "not a SOG bundle"),
             "cut.sog": (good[: len(good) // 2], "not a SOG bundle"),
             "no-meta.sog": (rezipped(drop=("meta.json",)), "no meta.json"),
             "no-image.sog": (rezipped(drop=("quats.webp",)), "lacks quats.webp"),
             "v1.sog": (rezipped(meta=old_meta), "SOG version 1 is not supported")}
    for name, (data, fragment) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputFileError) as err:
            formats.load_teacher(tmp_path / name)
        assert "\n" not in str(err.value) and str(tmp_path / name) in str(err.value) and fragment in str(err.value)
    with pytest.raises(NeuralGSError, match="zero Gaussians"):
        formats.sog_bytes(random_gaussians(n=0, degree=1))


# --- antimatter15 .splat ------------------------------------------------------------------

def assert_splat_close(g: Gaussians, back: Gaussians):
    """`back` (any order) is `g` as .splat keeps it: exact positions, float32 scales, DC and
    opacity bytes, the unit quaternion's bytes (q * 128 + 128), no SH rest."""
    where = {tuple(p): i for i, p in enumerate(g.means.tolist())}
    g = g.subset(torch.tensor([where[tuple(p)] for p in back.means.tolist()]))
    assert back.sh_degree == 0 and torch.equal(back.means, g.means)
    assert torch.allclose(back.scales, g.scales, atol=1e-5)
    rgb = (0.5 + SH_C0 * g.features_dc).clamp(0, 1)
    assert ((0.5 + SH_C0 * back.features_dc) - rgb).abs().max() <= 0.5 / 255 + EPS
    assert_opacities_close(g, back, 0.5)
    assert_same_rotations(back.quats, g.quats, 1 - 1e-4)


def test_splat_round_trip_and_teacher(tmp_path):
    g = random_gaussians(n=500, degree=2, seed=50)
    formats.write_gaussians(g, tmp_path / "s.splat")
    assert_splat_close(g, formats.load_teacher(tmp_path / "s.splat"))
    (tmp_path / "odd.splat").write_bytes((tmp_path / "s.splat").read_bytes()[:-5])
    with pytest.raises(InputFileError, match="not a .splat file: 15,995 bytes"):
        formats.load_teacher(tmp_path / "odd.splat")


def test_splat_read_by_splat_transform(tmp_path, splat_transform):
    g = random_gaussians(n=500, degree=0, seed=51)
    formats.write_gaussians(g, tmp_path / "s.splat")
    assert_splat_close(g, formats.read_ply(splat_transform(tmp_path / "s.splat", tmp_path / "theirs.ply")))


# --- PLY, half-float PLY ------------------------------------------------------------------

def test_half_float_ply_round_trip_and_teacher(tmp_path):
    g = random_gaussians(n=50, degree=2, seed=3)
    path = tmp_path / "h.ply"
    path.write_bytes(formats.ply_fp16_bytes(g))
    back = formats.load_teacher(path)
    for name in ("means", "scales", "quats", "opacities", "features_dc", "features_rest"):
        assert torch.equal(getattr(back, name), getattr(g, name).half().float()), name  # float16 rounding only
    assert formats.teacher_bytes(path, back) == path.stat().st_size < formats.ply_size(back)
    g.means[0, 0] = 70000.0
    with pytest.raises(ValueError, match="float16"):
        formats.ply_fp16_bytes(g)


# --- the suffix table: decode, teachers, sizes --------------------------------------------

@pytest.fixture
def decode_gives(monkeypatch):
    """`neuralgs decode` of any .ngs path gives these Gaussians (the codec has its own tests)."""
    from neuralgs_ns import codec

    def use(gaussians: Gaussians):
        scene = type("Scene", (), {"decode": lambda self: gaussians})()
        monkeypatch.setattr(codec.CompressedScene, "load", staticmethod(lambda path, max_clusters=None: scene))

    return use


def test_decode_writes_every_format(tmp_path, decode_gives, capsys):
    g = random_gaussians(n=300, degree=1, seed=60)
    decode_gives(g)
    for name in ("s.ply", "s.spz", "s.splat", "s.sog", "S.SOG"):
        assert neuralgs_cli(["decode", "in.ngs", "--output", str(tmp_path / name)]) == 0
        assert len(formats.read_gaussians(tmp_path / name)) == 300
    assert struct.unpack("<I", (tmp_path / "s.spz").read_bytes()[4:8])[0] == 4
    assert neuralgs_cli(["decode", "in.ngs", "--output", str(tmp_path / "v2.spz"), "--spz-version", "2"]) == 0
    assert gzip.decompress((tmp_path / "v2.spz").read_bytes())[4] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S.SOG", "s.ply", "s.sog", "s.splat", "s.spz", "v2.spz"]
    capsys.readouterr()


@pytest.mark.parametrize("args,message", [(["--output", "x.ply", "--spz-version", "3"], "applies to .spz outputs"),
                                          (["--output", "x.obj"], "use .ply, .spz, .splat or .sog")])
def test_decode_refuses_bad_options_before_work(tmp_path, monkeypatch, capsys, args, message):
    from neuralgs_ns import codec

    def never(*_, **__):
        raise AssertionError("decoded before checking the output")

    monkeypatch.setattr(codec.CompressedScene, "load", staticmethod(never))
    monkeypatch.chdir(tmp_path)
    assert neuralgs_cli(["decode", "in.ngs", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("neuralgs: error: ") and "\n" not in err and message in err
    assert list(tmp_path.iterdir()) == []


def test_suffix_table():
    assert formats.EXPORT_FORMATS == (".ply", ".spz", ".splat", ".sog")
    assert {".ckpt", ".yml", ".yaml"} <= set(formats.FORMATS) - set(formats.EXPORT_FORMATS)
    for suffix in formats.EXPORT_FORMATS:
        assert formats.FORMATS[suffix].read is not None and formats.FORMATS[suffix].encode is not None


def test_teachers_in_every_format_are_their_own_size(tmp_path):
    g = random_gaussians(n=200, degree=1, seed=70)
    for suffix in formats.EXPORT_FORMATS:
        path = tmp_path / f"t{suffix}"
        formats.write_gaussians(g, path)
        loaded = formats.load_teacher(path)
        assert len(loaded) == 200 and formats.teacher_bytes(path, loaded) == path.stat().st_size
    (tmp_path / "t.xyz").write_bytes(b"?")
    with pytest.raises(InputFileError, match="unknown format '.xyz'"):
        formats.load_teacher(tmp_path / "t.xyz")

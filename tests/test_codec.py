"""The .ngs bitstream: bit-exact round trips against the in-memory model, progressive
decoding, and one-line errors (never a crash) on damaged files."""

import json
import os
import random
import signal
import stat
import struct
import subprocess
import sys
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from neuralgs_ns.cli import main as neuralgs_cli
from neuralgs_ns.codec import FORMAT_VERSION, MAGIC, CompressedScene, read_info
from neuralgs_ns.codec import positions as position_coder
from neuralgs_ns.codec import residuals as residual_coder
from neuralgs_ns.codec.quantize import (morton_codes, morton_decode, quantize_positions, round_to_residual_steps,
                                        snap_positions, storage_order)
from neuralgs_ns.compress.field import ClusteredMLPField, FieldConfig, decode_gaussians
from neuralgs_ns.errors import InputFileError, NeuralGSError
from neuralgs_ns.formats import read_ply
from neuralgs_ns.gaussians import PARAM_NAMES


def fake_model(sizes=(300, 150, 60, 1), bits=14, precision="int8", sh_degree=1, seed=0, residual_columns=(0, 2, 8)):
    """What `CompressedScene.from_model` reads of a trained NeuralGSModel: positions snapped
    and in storage order, a field with trained-looking (perturbed) weights, corrections of
    `residual_columns` (the last one all zero: a column of one code)."""
    gen = torch.Generator().manual_seed(seed)
    n, k = sum(sizes), len(sizes)
    means = torch.randn(n, 3, generator=gen) * torch.tensor([1.0, 2.0, 0.5]) + 3.0
    means[5] = means[4]  # a duplicate position
    labels = torch.repeat_interleave(torch.arange(k), torch.tensor(sizes))
    positions, grid = snap_positions(means, bits)
    order = storage_order(quantize_positions(positions, grid, bits), labels)
    positions, labels = positions[order], labels[order]
    n_attributes = 11 + 3 * ((sh_degree + 1) ** 2 - 1)
    field = ClusteredMLPField.from_points(FieldConfig(n_frequencies=2, width=16, depth=3, weight_precision=precision),
                                          positions, labels, n_attributes, n_clusters=k, seed=seed)
    with torch.no_grad():
        for p in field.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    mins = -torch.rand(n_attributes, generator=gen) - 0.5
    config = SimpleNamespace(field_precision=precision, field_activation="tanh", sh_degree=sh_degree)
    residuals = torch.randn(n, len(residual_columns), generator=gen) * 0.1
    if residual_columns:
        residuals[:, -1] = 0.004
    return SimpleNamespace(config=config, field=field, positions=positions, labels=labels, position_grid=grid,
                           attribute_mins=mins, attribute_maxs=mins + 1 + torch.rand(n_attributes, generator=gen),
                           residual_columns=torch.tensor(residual_columns, dtype=torch.long),
                           residual_steps=torch.linspace(0.01, 0.05, len(residual_columns)), residuals=residuals)


def model_gaussians(model):
    """The model's own Gaussians: its field evaluated at its training precision."""
    with torch.no_grad():
        return decode_gaussians(model.field, model.positions, model.labels, model.attribute_mins,
                                model.attribute_maxs, model.config.sh_degree, model.residual_columns,
                                round_to_residual_steps(model.residuals, model.residual_steps))


def assert_same_gaussians(a, b):
    for name in PARAM_NAMES:
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.fixture(scope="module")
def valid_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ngs") / "scene.ngs"
    model = fake_model()
    CompressedScene.from_model(model).save(path)
    return path, model


# --- round trips -------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["int8", "float16"])
@pytest.mark.parametrize("bits,sh_degree,residual_columns", [(14, 1, (0, 2, 8)), (16, 3, ()), (9, 0, (1, 2, 3, 10))])
def test_decoding_a_file_gives_the_models_gaussians_bit_for_bit(tmp_path, precision, bits, sh_degree,
                                                                  residual_columns):
    model = fake_model(bits=bits, precision=precision, sh_degree=sh_degree, residual_columns=residual_columns)
    size = CompressedScene.from_model(model).save(tmp_path / "s.ngs")
    assert size == (tmp_path / "s.ngs").stat().st_size and (tmp_path / "s.ngs").read_bytes().startswith(MAGIC)
    scene = CompressedScene.load(tmp_path / "s.ngs")
    assert torch.equal(scene.positions, model.positions) and torch.equal(scene.labels, model.labels)
    assert_same_gaussians(scene.decode(), model_gaussians(model))
    # The decoded scene is what the file holds: writing it again gives the same bytes.
    assert scene.to_bytes() == (tmp_path / "s.ngs").read_bytes()


def test_version_1_files_still_decode(tmp_path):
    """A file of format 1 (no residual sections) is this file without RTAB, marked version 1."""
    model = fake_model(residual_columns=())
    data = CompressedScene.from_model(model).to_bytes()
    sections = _sections(data)
    rtab = next(s for s in sections if s[0] == "RTAB")
    v1 = (data[:8] + struct.pack("<HH", 1, len(sections) - 1) + data[12 : rtab[1]] + data[rtab[2] + rtab[3] :])
    (tmp_path / "v1.ngs").write_bytes(v1)
    scene = CompressedScene.load(tmp_path / "v1.ngs")
    assert scene.n_residual_columns == 0
    assert_same_gaussians(scene.decode(), model_gaussians(model))


def test_residual_codes_round_trip_and_cost_their_entropy():
    rng = np.random.default_rng(3)
    codes = np.round(rng.laplace(0, 1.5, (5000, 3))).astype(np.int64)
    codes[:, 1] = -4  # one value: costs nothing
    table = residual_coder.ResidualTable.fit(codes, [0, 5, 7], [0.02, 0.1, 0.05])
    table = residual_coder.ResidualTable.from_bytes(table.to_bytes(), n_attributes=8)
    blocks = [residual_coder.encode_cluster(codes[a:b], table) for a, b in ((0, 3000), (3000, 4999), (4999, 5000))]
    back = np.concatenate([residual_coder.decode_cluster(block, b - a, table)
                           for block, (a, b) in zip(blocks, ((0, 3000), (3000, 4999), (4999, 5000)))])
    assert np.array_equal(back, codes)
    # Laplace(1.5) rounded: about 2.6 bits a code; the stream is within 1% (+ framing) of that.
    assert sum(map(len, blocks)) <= 1.01 * table.ideal_bits(codes) / 8 + 3 * 8
    assert table.ideal_bits(codes) / 8 < 0.4 * codes.size  # far below a byte per code
    with pytest.raises(ValueError):
        residual_coder.ResidualTable.from_bytes(table.to_bytes(), n_attributes=6)  # column 7 does not exist
    with pytest.raises(ValueError):
        residual_coder.decode_cluster(blocks[0][:-4], 3000, table)


@pytest.mark.parametrize("residual_columns", [(0, 2, 8), ()])
def test_planned_bytes_match_the_written_file(tmp_path, residual_columns):
    from neuralgs_ns.codec import planned_bytes
    from neuralgs_ns.codec.weights import cluster_bytes_expected, layer_sizes

    model = fake_model(residual_columns=residual_columns)
    scene = CompressedScene.from_model(model)
    size = scene.save(tmp_path / "s.ngs")
    info = read_info(tmp_path / "s.ngs")
    plan = planned_bytes(model.positions, model.labels, model.position_grid, 14, len(model.attribute_mins),
                         cluster_bytes_expected(layer_sizes(scene.field_state), "int8"),
                         None if scene.residual_codes is None else scene.residual_codes.numpy(), residual_columns,
                         model.residual_steps.tolist())
    assert plan["positions"] == info["sections"]["positions"]
    assert plan["mlp_weights"] == info["sections"]["mlp_weights"]
    written = info["sections"]["residuals"]
    assert written <= plan["residuals"] <= written + 4 * scene.n_clusters  # at most a word over per cluster
    assert sum(plan.values()) - plan["residuals"] == size - written


def test_int8_weights_are_half_the_bytes_of_float16(tmp_path):
    sizes = {p: read_info_of(fake_model(precision=p), tmp_path / f"{p}.ngs")["sections"]["mlp_weights"]
             for p in ("int8", "float16")}
    assert sizes["int8"] < 0.6 * sizes["float16"]


def read_info_of(model, path):
    CompressedScene.from_model(model).save(path)
    return read_info(path)


def test_morton_codes_round_trip_and_interleave():
    codes = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [65535, 0, 65535], [12345, 54321, 777]])
    keys = morton_codes(codes)
    assert keys[:3].tolist() == [1, 2, 4]
    assert torch.equal(morton_decode(keys), codes)


def test_position_coder_round_trips_sorted_keys_with_duplicates():
    rng = np.random.default_rng(1)
    for bits, n in [(1, 5), (14, 1), (14, 2000), (16, 300)]:
        keys = np.sort(rng.integers(0, 1 << (3 * bits), n)).astype(np.int64)
        keys[n // 2 :: 7] = keys[n // 2]  # runs of duplicates
        keys = np.sort(keys)
        model = position_coder.ExponentModel.fit([keys], bits)
        assert np.array_equal(position_coder.decode_cluster(position_coder.encode_cluster(keys, model), n, model,
                                                            bits), keys)


def test_entropy_coding_beats_the_raw_grid_codes(tmp_path):
    model = fake_model(sizes=(4000, 2000), bits=14)
    info = read_info_of(model, tmp_path / "s.ngs")
    assert info["bits_per_gaussian"]["positions"] < 0.8 * 3 * 14


# --- progressive decoding ----------------------------------------------------------------

def test_first_k_clusters_decode_from_the_head_of_the_file(valid_file):
    path, model = valid_file
    data = path.read_bytes()
    full = CompressedScene.load(path).decode()
    sizes = torch.bincount(model.labels).tolist()
    for k in (1, 2, 4):
        n = sum(sizes[:k])
        head = CompressedScene.load(path, max_clusters=k)
        assert head.n_clusters == k and len(head.positions) == n
        assert_same_gaussians(head.decode(), full.subset(torch.arange(n)))
    # Only the head is needed: cut the file right after cluster 1's sections.
    # 5 tables, then 3 sections per cluster (positions, MLP, residuals).
    cut = CompressedScene.from_bytes(data[: _section_ends(data)[5 + 2 * 3 - 1]], path, max_clusters=2)
    assert_same_gaussians(cut.decode(), full.subset(torch.arange(sum(sizes[:2]))))


def _sections(data):
    """(tag, header offset, payload offset, payload length) of every section."""
    out, offset = [], struct.calcsize("<8sHH")
    while offset < len(data):
        tag, length, _ = struct.unpack_from("<4sII", data, offset)
        out.append((tag.decode(), offset, offset + 12, length))
        offset += 12 + length
    return out


def _section_ends(data):
    return [payload + length for _, _, payload, length in _sections(data)]


def test_cli_decode_max_clusters_and_formats(valid_file, tmp_path, capsys):
    path, model = valid_file
    assert neuralgs_cli(["decode", str(path), "--output", str(tmp_path / "a.ply"), "--max-clusters", "2"]) == 0
    assert len(read_ply(tmp_path / "a.ply")) == sum(torch.bincount(model.labels).tolist()[:2])
    for suffix in (".ply", ".spz", ".splat"):
        assert neuralgs_cli(["decode", str(path), "--output", str(tmp_path / f"full{suffix}")]) == 0
        assert (tmp_path / f"full{suffix}").stat().st_size > 0
    assert_same_gaussians(read_ply(tmp_path / "full.ply"), CompressedScene.load(path).decode())


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_get_the_mode_the_umask_gives(valid_file, tmp_path, umask, mode):
    path, _ = valid_file
    previous = os.umask(umask)
    try:
        for suffix in (".ply", ".spz", ".splat"):
            assert neuralgs_cli(["decode", str(path), "--output", str(tmp_path / f"out{suffix}")]) == 0
            assert stat.S_IMODE((tmp_path / f"out{suffix}").stat().st_mode) == mode, suffix
    finally:
        os.umask(previous)


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_while_writing_leaves_no_file_behind(valid_file, tmp_path, signum, code):
    """The decoder is stopped while its output is on disk but not yet renamed into place (an
    fsync made slow): the command exits with 128 + the signal and leaves nothing."""
    path, _ = valid_file
    script = (
        "import os, signal, sys, time\n"
        # As in a terminal, even when pytest runs where SIGINT is ignored (a background job).
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "def slow_fsync(fd):\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
        "os.fsync = slow_fsync\n"
        "from neuralgs_ns.cli import main\n"
        f"sys.exit(main(['decode', {str(path)!r}, '--output', {str(tmp_path / 'out.ply')!r}]))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "the file being written was removed" in err
    assert list(tmp_path.iterdir()) == []


# --- info ----------------------------------------------------------------------------------

def test_info_breaks_the_file_down_completely(valid_file, capsys):
    path, model = valid_file
    assert neuralgs_cli(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert sum(info["sections"].values()) == info["bytes"] == path.stat().st_size
    assert info["gaussians"] == len(model.positions) and info["clusters"] == 4
    assert info["cluster_sizes"] == [300, 150, 60, 1]
    assert info["bits_per_gaussian"]["total"] == pytest.approx(8 * info["bytes"] / info["gaussians"])
    assert neuralgs_cli(["info", str(path)]) == 0
    table = capsys.readouterr().out
    assert "positions" in table and "mlp_weights" in table and "residuals" in table and "bits/Gaussian" in table
    assert info["residual_columns"] == [0, 2, 8] and info["sections"]["residuals"] > 0


# --- bad input -----------------------------------------------------------------------------

def _cli_error(args, capsys):
    assert neuralgs_cli(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    return err


@pytest.mark.parametrize("damage,message", [
    (lambda d: d[:5], "truncated"),
    (lambda d: d[:40], "truncated"),
    (lambda d: d[:-3], "truncated"),
    (lambda d: b"PK" + d[2:], "wrong magic"),
    (lambda d: d[:8] + struct.pack("<H", FORMAT_VERSION + 1) + d[10:], "newer"),
    (lambda d: d + b"\0", "unexpected bytes"),
])
def test_damaged_files_give_one_line_errors_and_no_output(valid_file, tmp_path, capsys, damage, message):
    path, _ = valid_file
    bad = tmp_path / "bad.ngs"
    bad.write_bytes(damage(path.read_bytes()))
    err = _cli_error(["decode", str(bad), "--output", str(tmp_path / "out.ply")], capsys)
    assert "bad.ngs" in err and message in err
    assert list(tmp_path.iterdir()) == [bad]  # no output, no temp file
    _cli_error(["info", str(bad)], capsys)


def test_a_flipped_byte_in_any_section_names_that_section(valid_file, tmp_path):
    path, _ = valid_file
    data = path.read_bytes()
    for tag, _, payload, length in _sections(data):
        for where in {payload, payload + length // 2, payload + length - 1}:
            damaged = bytearray(data)
            damaged[where] ^= 0x10
            with pytest.raises(InputFileError, match=f"checksum mismatch in section {tag}"):
                CompressedScene.from_bytes(bytes(damaged), tmp_path / "x.ngs")


def test_zero_gaussians_cannot_be_written(tmp_path):
    scene = CompressedScene.from_model(fake_model())
    scene.positions, scene.labels = scene.positions[:0], scene.labels[:0]
    with pytest.raises(NeuralGSError, match="no Gaussians"):
        scene.save(tmp_path / "empty.ngs")
    assert not (tmp_path / "empty.ngs").exists()


def test_decode_to_a_missing_folder_or_unknown_format_fails_before_work(valid_file, tmp_path, capsys):
    path, _ = valid_file
    err = _cli_error(["decode", str(path), "--output", str(tmp_path / "no" / "x.ply")], capsys)
    assert "does not exist" in err
    err = _cli_error(["decode", str(path), "--output", str(tmp_path / "x.obj")], capsys)
    assert ".obj" in err
    assert list(tmp_path.iterdir()) == []


def _fix_checksums(data: bytearray) -> bytes:
    """Recomputes every section's CRC (as far as the section table still parses), so the
    mutation reaches the section decoders instead of stopping at the checksum."""
    offset = struct.calcsize("<8sHH")
    while offset + 12 <= len(data):
        tag, length, _ = struct.unpack_from("<4sII", data, offset)
        end = min(offset + 12 + length, len(data))
        struct.pack_into("<I", data, offset + 8, zlib.crc32(bytes(data[offset + 12 : end])))
        offset += 12 + length
    return bytes(data)


@pytest.mark.parametrize("fix_checksums", [False, True])
def test_fuzzed_files_never_crash_the_decoder(valid_file, tmp_path, fix_checksums):
    path, _ = valid_file
    data = path.read_bytes()
    rng = random.Random(1234 + fix_checksums)
    outcomes = {"error": 0, "decoded": 0}
    for _ in range(250):
        mutated = bytearray(data)
        for _ in range(rng.choice([1, 1, 2, 8])):
            op, where = rng.random(), rng.randrange(len(mutated))
            if op < 0.6:
                mutated[where] = rng.randrange(256)
            elif op < 0.8:
                del mutated[where : where + rng.randrange(1, 64)]
            else:
                mutated[where:where] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        if fix_checksums:
            mutated = bytearray(_fix_checksums(mutated))
        try:
            scene = CompressedScene.from_bytes(bytes(mutated), tmp_path / "fuzz.ngs")
            scene.decode()
            outcomes["decoded"] += 1
        except NeuralGSError as err:
            assert "fuzz.ngs" in str(err) and "\n" not in str(err)
            outcomes["error"] += 1
    assert outcomes["error"] > 100

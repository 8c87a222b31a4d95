"""Niantic SPZ, versions 1-4 read, 2-4 written.

Layout and quantisation as nianticlabs/spz (src/cc/load-spz.cc, include/spz/load-spz.h): one
header, then each attribute for all Gaussians in turn: positions (24-bit fixed point),
alphas, colours, scales, rotations, SH. Versions 1-3 gzip a 16-byte header and the attributes
as one stream; version 4 (the library's PackOptions default, LATEST_SPZ_HEADER_VERSION) writes
a plain 32-byte header, a table of contents and one zstd stream per attribute. Rotations are
the unit quaternion's x, y, z bytes (w >= 0 recomputed) up to version 2, and "smallest three"
(the index of the largest component and the other three in 10 bits each) from version 3.

Coordinates are stored as given, with no axis flip, as the reference library does with its
default options (CoordinateSystem::UNSPECIFIED) and as gsply reads and writes: gsply.read_spz
gives back these positions and rotations. The reference calls its stored frame RUB, and a
loader that asks for RDF output (splat-transform does) flips y and z of such a file.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from neuralgs_ns.errors import InputFileError, NeuralGSError
from neuralgs_ns.formats._arrays import (byte_opacity_logit, gaussians_from_numpy, numpy32, sigmoid, to_u8,
                                         unit_wxyz)
from neuralgs_ns.gaussians import Gaussians

SPZ_MAGIC = 0x5053474E  # "NGSP"
SPZ_DEFAULT_VERSION = 4  # what the reference library writes unless told otherwise
SPZ_VERSIONS = (2, 3, 4)  # written; version 1 (float16 positions, never released) is only read
SPZ_MAX_FRACTIONAL_BITS = 12  # the reference's fixed choice (1/4096, ~0.25 mm in metres)
SPZ_COLOR_SCALE = 0.15  # DC byte = dc * 0.15 * 255 + 127.5: "wide" RGB, room beyond [0, 1]
# Bits kept of each SH byte, as the reference packs them: the bytes are still 8-bit (any
# decoder reads them), but rounding to bucket centres makes the compressed stream smaller.
SPZ_SH1_BITS = 5
SPZ_SH_REST_BITS = 4
_GZIP_LEVEL = 6  # zlib's default, what the reference uses for versions 1-3
_ZSTD_LEVEL = 12  # the reference's for version 4
_INT24_MAX = (1 << 23) - 1
_SQRT1_2 = math.sqrt(0.5)
_SMALLEST_THREE_MAX = (1 << 9) - 1  # 9-bit magnitudes (and a sign bit) per stored component


def spz_fractional_bits(means: np.ndarray) -> int:
    """Fixed-point fraction bits for these positions: the reference's 12 unless the largest
    |coordinate| would then overflow SPZ's signed 24 bits (2048 units at 12 bits); each
    halving of precision doubles the range, down to 1 bit (4,194,303.5 units). The reference
    writes 12 regardless and silently wraps far-away splats; gsply refuses 0 bits."""
    max_abs = float(np.abs(means).max()) if means.size else 0.0
    if not np.isfinite(max_abs):
        raise NeuralGSError("some positions are NaN or infinite; SPZ cannot store them")
    for bits in range(SPZ_MAX_FRACTIONAL_BITS, 0, -1):
        if round(max_abs * (1 << bits)) <= _INT24_MAX:
            return bits
    raise NeuralGSError(f"positions reach {max_abs:.6g}, beyond the {(_INT24_MAX + 0.5) / 2:,.0f} that "
                        "SPZ's 24-bit fixed point can hold; write .ply or .splat instead")


def _sh_bytes(rest: np.ndarray) -> np.ndarray:
    """SH rest [N, K-1, 3] as bytes round(x * 128) + 128, each rounded to the centre of its
    bucket (2^(8 - bits) wide): 5 bits for the degree-1 coefficients, 4 for higher ones."""
    k = rest.shape[1]
    bucket = np.where(np.arange(k) < 3, 1 << (8 - SPZ_SH1_BITS), 1 << (8 - SPZ_SH_REST_BITS))
    bucket = bucket.astype(np.float32)[None, :, None]
    q = np.clip(np.rint(rest * np.float32(128)) + np.float32(128), 0, 255)
    q = np.floor((q + bucket // 2) / bucket) * bucket
    return np.minimum(q, 255).astype(np.uint8)


def _rotations_first_three(q_wxyz: np.ndarray) -> np.ndarray:
    """Version 2: x, y, z of the unit quaternion with w made non-negative (q and -q are one
    rotation), so the decoder recovers w = sqrt(1 - |xyz|^2); [N, 3] bytes."""
    xyz = q_wxyz[:, 1:] * np.where(q_wxyz[:, :1] < 0, -1, 1).astype(np.float32)
    return to_u8(xyz * 127.5 + 127.5)


def _rotations_smallest_three(q_wxyz: np.ndarray) -> np.ndarray:
    """Version 3+: a little-endian uint32 per Gaussian [N, 4] bytes: the index (in xyzw order)
    of the largest |component| in the top 2 bits, then the other three components in xyzw
    order, 10 bits each (sign, then |c| / sqrt(1/2) in 9 bits), the quaternion negated
    first if its largest component is negative."""
    q = q_wxyz[:, [1, 2, 3, 0]].astype(np.float64)  # the reference's xyzw order
    largest = np.argmax(np.abs(q), axis=1)
    negate = np.take_along_axis(q, largest[:, None], axis=1)[:, 0] < 0
    comp = largest.astype(np.uint32)
    for i in range(4):
        keep = largest != i
        negbit = ((q[:, i] < 0) ^ negate).astype(np.uint32)
        mag = np.minimum(np.floor(_SMALLEST_THREE_MAX * np.abs(q[:, i]) / _SQRT1_2 + 0.5),
                         _SMALLEST_THREE_MAX).astype(np.uint32)
        comp = np.where(keep, (comp << np.uint32(10)) | (negbit << np.uint32(9)) | mag, comp)
    return comp.astype("<u4").view(np.uint8).reshape(-1, 4)


def _spz_sections(gaussians: Gaussians, version: int):
    """(fractional bits, [positions, alphas, colours, scales, rotations, SH] byte arrays)."""
    means = numpy32(gaussians.means)
    n = means.shape[0]
    bits = spz_fractional_bits(means)
    # Positions: 24-bit two's complement, little-endian: the low 3 bytes of each int32.
    fixed = np.rint(means * np.float32(1 << bits)).astype("<i4")
    positions = fixed.view(np.uint8).reshape(n, 3, 4)[:, :, :3]
    alphas = to_u8(sigmoid(numpy32(gaussians.opacities[:, 0])) * 255)
    colors = to_u8(numpy32(gaussians.features_dc) * (SPZ_COLOR_SCALE * 255) + 127.5)
    scales = to_u8((numpy32(gaussians.scales) + 10) * 16)  # log scales in [-10, 5.94], steps of 1/16
    q = unit_wxyz(numpy32(gaussians.quats))
    rotations = _rotations_first_three(q) if version < 3 else _rotations_smallest_three(q)
    sh = _sh_bytes(numpy32(gaussians.features_rest))
    return bits, [np.ascontiguousarray(s) for s in (positions, alphas, colors, scales, rotations, sh)]


def spz_bytes(gaussians: Gaussians, *, version: int = SPZ_DEFAULT_VERSION) -> bytes:
    """The Niantic SPZ of `gaussians` in `version` (2, 3 or 4). SH rest coefficients are
    coefficient-major with the colour channel innermost (byte k * 3 + c of a Gaussian's
    block), i.e. features_rest [N, K-1, 3] flattened row-major; the Inria PLY is channel-major
    instead. Flags are 0: no antialiasing flag, as Gaussians do not record a rasterize mode.
    The reference loader refuses files of over 10,000,000 Gaussians."""
    if version not in SPZ_VERSIONS:
        raise NeuralGSError(f"SPZ version {version} cannot be written (use {', '.join(map(str, SPZ_VERSIONS))})")
    bits, sections = _spz_sections(gaussians, version)
    n, degree = len(gaussians), gaussians.sh_degree
    if version < 4:
        header = struct.pack("<IIIBBBB", SPZ_MAGIC, version, n, degree, bits, 0, 0)
        # wbits 31 = a gzip container (mtime 0, so the output is reproducible); sections are
        # fed one at a time rather than joined into one more payload-sized copy first.
        gz = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 31)
        chunks = [gz.compress(header)] + [gz.compress(s) for s in sections] + [gz.flush()]
        return b"".join(chunks)
    import zstandard

    compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    streams = [(compressor.compress(s.tobytes()), s.nbytes) for s in sections if s.nbytes]
    toc_offset = 32  # right after the header: no extensions
    header = struct.pack("<IIIBBBBI12x", SPZ_MAGIC, version, n, degree, bits, 0, len(streams), toc_offset)
    toc = b"".join(struct.pack("<QQ", len(c), size) for c, size in streams)
    return header + toc + b"".join(c for c, _ in streams)


# --- reading ------------------------------------------------------------------------------

def read_spz(path: Path) -> Gaussians:
    """Gaussians of an SPZ file of any version (1-4), stored coordinates as they are."""
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise InputFileError(path, f"not a readable SPZ file (gzip: {err})") from None
        if len(raw) < 16:
            raise InputFileError(path, "not an SPZ file (shorter than its 16-byte header)")
        magic, version, n, degree, bits, _flags, _ = struct.unpack("<IIIBBBB", raw[:16])
        if magic != SPZ_MAGIC or not 1 <= version <= 3:
            raise InputFileError(path, f"not an SPZ file (gzip of magic {magic:#x}, version {version})")
        layout = _section_sizes(path, n, degree, version)
        sections = _split(path, raw[16:], layout)  # extensions (flag 0x2) may follow: not read
    elif len(data) >= 32 and struct.unpack("<I", data[:4])[0] == SPZ_MAGIC:
        _, version, n, degree, bits, _flags, n_streams, toc_offset = struct.unpack("<IIIBBBBI", data[:20])
        if version < 4:
            raise InputFileError(path, f"SPZ version {version} without its gzip container")
        layout = _section_sizes(path, n, degree, version)
        sections = _read_streams(path, data, n_streams, toc_offset, layout)
    else:
        raise InputFileError(path, "not an SPZ file (neither gzip nor an NGSP header)")
    return _decode(sections, n, degree, bits, version)


def _section_sizes(path: Path, n: int, degree: int, version: int):
    if degree > 3:
        raise InputFileError(path, f"SH degree {degree} is beyond the 3 these Gaussians hold")
    if version > 4:
        raise InputFileError(path, f"SPZ version {version} is newer than the 1-4 this reader knows")
    k = (degree + 1) ** 2 - 1
    return [("positions", n * (6 if version == 1 else 9)), ("alphas", n), ("colors", n * 3), ("scales", n * 3),
            ("rotations", n * (4 if version >= 3 else 3)), ("sh", n * k * 3)]


def _split(path: Path, raw: bytes, layout):
    need = sum(size for _, size in layout)
    if len(raw) < need:
        raise InputFileError(path, f"truncated SPZ: {need:,} bytes of attributes expected, {len(raw):,} present")
    sections, offset = {}, 0
    for name, size in layout:
        sections[name] = np.frombuffer(raw, dtype=np.uint8, count=size, offset=offset)
        offset += size
    return sections


def _read_streams(path: Path, data: bytes, n_streams: int, toc_offset: int, layout):
    """Version 4: [header][extensions][TOC: (compressed, uncompressed) u64 pairs][zstd streams],
    one stream per non-empty attribute in order."""
    import zstandard

    wanted = [(name, size) for name, size in layout if size]
    toc_end = toc_offset + 16 * n_streams
    if n_streams != len(wanted) or toc_offset < 32 or toc_end > len(data):
        raise InputFileError(path, f"damaged SPZ v4 table of contents ({n_streams} streams, "
                             f"{len(wanted)} expected)")
    sections, offset = {name: np.zeros(0, np.uint8) for name, _ in layout}, toc_end
    decompressor = zstandard.ZstdDecompressor()
    for i, (name, size) in enumerate(wanted):
        compressed, uncompressed = struct.unpack_from("<QQ", data, toc_offset + 16 * i)
        if uncompressed != size or offset + compressed > len(data):
            raise InputFileError(path, f"damaged SPZ v4 stream '{name}' ({uncompressed:,} bytes, {size:,} expected)")
        try:
            raw = decompressor.decompress(data[offset:offset + compressed], max_output_size=size)
        except zstandard.ZstdError as err:
            raise InputFileError(path, f"damaged SPZ v4 stream '{name}' (zstd: {err})") from None
        if len(raw) != size:
            raise InputFileError(path, f"damaged SPZ v4 stream '{name}' ({len(raw):,} bytes, {size:,} expected)")
        sections[name] = np.frombuffer(raw, dtype=np.uint8)
        offset += compressed
    return sections


def _decode(s, n: int, degree: int, bits: int, version: int) -> Gaussians:
    if version == 1:  # float16 positions
        means = s["positions"].view("<f2").reshape(n, 3).astype(np.float32)
    else:  # 24-bit two's complement, sign-extended
        b = s["positions"].reshape(n, 3, 3).astype(np.int32)
        fixed = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
        fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
        means = fixed.astype(np.float32) / np.float32(1 << bits)
    scales = s["scales"].reshape(n, 3) / 16.0 - 10.0
    colors = (s["colors"].reshape(n, 3) / 255.0 - 0.5) / SPZ_COLOR_SCALE
    rotations = s["rotations"].reshape(n, 4 if version >= 3 else 3)
    quats = _unpack_smallest_three(rotations) if version >= 3 else _unpack_first_three(rotations)
    k = (degree + 1) ** 2 - 1
    rest = (s["sh"].reshape(n, k, 3).astype(np.float32) - 128) / 128
    return gaussians_from_numpy(means, scales, quats, byte_opacity_logit(s["alphas"]), colors, rest)


def _unpack_first_three(b: np.ndarray) -> np.ndarray:
    xyz = b.astype(np.float64) / 127.5 - 1
    w = np.sqrt(np.maximum(0, 1 - (xyz ** 2).sum(axis=1)))
    return np.concatenate([w[:, None], xyz], axis=1)


def _unpack_smallest_three(b: np.ndarray) -> np.ndarray:
    comp = np.ascontiguousarray(b).view("<u4")[:, 0].astype(np.uint32)
    largest = comp >> np.uint32(30)
    q = np.zeros((len(comp), 4))  # xyzw
    for i in range(3, -1, -1):  # the last component packed sits in the lowest bits
        stored = largest != i
        mag = (comp & np.uint32(_SMALLEST_THREE_MAX)).astype(np.float64)
        sign = np.where((comp >> np.uint32(9)) & np.uint32(1), -1.0, 1.0)
        q[:, i] = np.where(stored, sign * _SQRT1_2 * mag / _SMALLEST_THREE_MAX, 0.0)
        comp = np.where(stored, comp >> np.uint32(10), comp)
    rows = np.arange(len(q))
    q[rows, largest] = np.sqrt(np.maximum(0, 1 - (q ** 2).sum(axis=1)))
    return q[:, [3, 0, 1, 2]]  # wxyz


# --- through gsply, an implementation that is not ours (the bench and the tests) ------------

def read_spz_gsply(path: Path) -> Gaussians:
    """An SPZ file through gsply. gsply gives PLY conventions (checked by the tests on a round
    trip): log scales, logit opacities [N], unit wxyz quaternions, SH DC, SH rest
    [N, K-1, 3] coefficient-major (None at degree 0)."""
    import gsply

    data = gsply.read_spz(str(path))
    n = len(data.means)
    rest = data.shN if data.shN is not None and data.shN.size else np.zeros((n, 0, 3), np.float32)
    return gaussians_from_numpy(data.means, data.scales, data.quats, data.opacities, data.sh0, rest)


def write_spz_gsply(gaussians: Gaussians, path: Path) -> None:
    """SPZ as gsply writes it (version 3, its default), written in place of `path` only when
    complete. It keeps 8 bits per SH coefficient where the reference (and `spz_bytes`) keeps
    5 for degree 1 and 4 above, so its files are larger on SH-3 scenes."""
    import os

    import gsply

    g = gaussians
    data = gsply.GSData(**{name: np.ascontiguousarray(value.detach().cpu().numpy(), dtype=np.float32) for name, value in (
        ("means", g.means), ("scales", g.scales), ("quats", torch.nn.functional.normalize(g.quats, dim=-1)),
        ("opacities", g.opacities[:, 0]), ("sh0", g.features_dc), ("shN", g.features_rest))})
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        gsply.write_spz(str(tmp), data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write leaves nothing behind

"""Writers of Gaussians for web viewers: Niantic SPZ and antimatter15 .splat (and, through
`gaussians.write_ply`, the Inria 3DGS PLY), chosen by the output's suffix.

Every encoder is vectorised numpy over all Gaussians at once (no per-Gaussian Python), so a
million Gaussians take seconds; SPZ's time is mostly gzip.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from neuralgs_ns.errors import NeuralGSError
from neuralgs_ns.gaussians import SH_C0, Gaussians, write_ply
from neuralgs_ns.utils import atomic_write_bytes

EXPORT_FORMATS = (".ply", ".spz", ".splat")

# --- Niantic SPZ, version 2 -------------------------------------------------------------
# Layout and quantisation as nianticlabs/spz src/cc/load-spz.cc (the v2 packGaussians) and
# gsply's spz.py reader: gzip of a 16-byte header, then each attribute for all Gaussians in
# turn: positions, alphas, colours, scales, rotations, SH.

SPZ_MAGIC = 0x5053474E  # "NGSP"
SPZ_VERSION = 2  # 3-byte xyz quaternions; v3 switched to smallest-three, v4 to zstd
SPZ_MAX_FRACTIONAL_BITS = 12  # the reference's fixed choice (1/4096, ~0.25 mm in metres)
SPZ_COLOR_SCALE = 0.15  # DC byte = dc * 0.15 * 255 + 127.5: "wide" RGB, room beyond [0, 1]
# Bits kept of each SH byte, as the reference packs them: the bytes are still 8-bit (any
# decoder reads them), but rounding to bucket centres makes the gzip stream much smaller.
SPZ_SH1_BITS = 5
SPZ_SH_REST_BITS = 4
_GZIP_LEVEL = 6  # zlib's default, what the reference uses
_INT24_MAX = (1 << 23) - 1


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # tanh form: no overflow warning for very negative logits, unlike 1 / (1 + exp(-x)).
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def _to_u8(x: np.ndarray) -> np.ndarray:
    """Round to nearest and clamp to a byte (the reference's toUint8)."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _unit_wxyz(quats: np.ndarray) -> np.ndarray:
    """Unit quaternions; a zero quaternion (no rotation defined) becomes the identity."""
    norm = np.linalg.norm(quats, axis=1, keepdims=True)
    unit = quats / np.where(norm > 0, norm, 1)
    unit[norm[:, 0] == 0, 0] = 1
    return unit


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


def _spz_sh_bytes(rest: np.ndarray) -> np.ndarray:
    """SH rest [N, K-1, 3] as bytes round(x * 128) + 128, each rounded to the centre of its
    bucket (2^(8 - bits) wide): 5 bits for the degree-1 coefficients, 4 for higher ones."""
    k = rest.shape[1]
    bucket = np.where(np.arange(k) < 3, 1 << (8 - SPZ_SH1_BITS), 1 << (8 - SPZ_SH_REST_BITS))
    bucket = bucket.astype(np.float32)[None, :, None]
    q = np.clip(np.rint(rest * np.float32(128)) + np.float32(128), 0, 255)
    q = np.floor((q + bucket // 2) / bucket) * bucket
    return np.minimum(q, 255).astype(np.uint8)


def spz_bytes(gaussians: Gaussians, *, compresslevel: int = _GZIP_LEVEL) -> bytes:
    """The Niantic SPZ (version 2, gzip) of `gaussians`. gzip is most of the time: level 6
    (the reference's) is about 4x slower than level 4 for files about 2-4% smaller.

    Coordinates are stored as given, with no axis flip, as gsply writes and reads SPZ: so
    gsply.read_spz gives back these positions and rotations. Niantic's reference library calls
    its stored frame RUB and flips axes only when told the caller's frame (PLY is usually
    RDF: y and z flipped); a loader asked for RDF output will flip y and z of this file.
    SH rest coefficients are coefficient-major with the colour channel innermost (byte
    k * 3 + c of a Gaussian's block), i.e. features_rest [N, K-1, 3] flattened row-major; the
    Inria PLY is channel-major instead. Flags are 0: no antialiasing flag, as Gaussians do not
    record a rasterize mode. Niantic's reference loader refuses files of over 10,000,000
    Gaussians.
    """
    means = _numpy(gaussians.means)
    n = means.shape[0]
    bits = spz_fractional_bits(means)

    # Positions: 24-bit two's complement, little-endian: the low 3 bytes of each int32.
    fixed = np.rint(means * np.float32(1 << bits)).astype("<i4")
    positions = fixed.view(np.uint8).reshape(n, 3, 4)[:, :, :3]
    alphas = _to_u8(_sigmoid(_numpy(gaussians.opacities[:, 0])) * 255)
    colors = _to_u8(_numpy(gaussians.features_dc) * (SPZ_COLOR_SCALE * 255) + 127.5)
    # Log scales in [-10, 5.94] in steps of 1/16.
    scales = _to_u8((_numpy(gaussians.scales) + 10) * 16)
    # Rotations: xyz of the unit quaternion with w made non-negative (q and -q are the same
    # rotation), so the decoder recovers w = sqrt(1 - |xyz|^2).
    q = _unit_wxyz(_numpy(gaussians.quats))
    xyz = q[:, 1:] * np.where(q[:, :1] < 0, -1, 1).astype(np.float32)
    rotations = _to_u8(xyz * 127.5 + 127.5)

    header = struct.pack("<IIIBBBB", SPZ_MAGIC, SPZ_VERSION, n, gaussians.sh_degree, bits, 0, 0)
    sections = [positions, alphas, colors, scales, rotations]
    if gaussians.sh_degree > 0:
        sections.append(_spz_sh_bytes(_numpy(gaussians.features_rest)))
    # wbits 31 = a gzip container (mtime 0, so the output is reproducible); sections are fed
    # one at a time rather than joined into one more payload-sized copy first.
    gz = zlib.compressobj(compresslevel, zlib.DEFLATED, 31)
    chunks = [gz.compress(header)]
    chunks += [gz.compress(np.ascontiguousarray(s)) for s in sections]
    chunks.append(gz.flush())
    return b"".join(chunks)


# --- antimatter15 .splat ----------------------------------------------------------------

SPLAT_DTYPE = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])


def splat_bytes(gaussians: Gaussians) -> bytes:
    """The antimatter15 .splat of `gaussians`: no header, 32 bytes per Gaussian (position and
    activated scale as float32 x3, RGBA bytes of 0.5 + SH_C0 * dc and sigmoid(opacity), the
    unit wxyz quaternion as q * 128 + 128 bytes). View-dependent SH is dropped.

    Gaussians are sorted by decreasing exp(sum of log scales) * sigmoid(opacity) (volume times
    opacity), the key of antimatter15/splat's convert.py, so viewers that stream the file show
    the big, opaque splats first. The key is compared in log space so huge scales don't
    overflow. Bytes are rounded to nearest where convert.py truncates: same decoder, half the
    error.
    """
    log_scales = _numpy(gaussians.scales)
    opacities = _numpy(gaussians.opacities[:, 0])
    log_key = log_scales.sum(axis=1) - np.logaddexp(0, -opacities)  # log(volume * sigmoid)
    order = np.argsort(-log_key, kind="stable")

    table = np.empty(len(order), dtype=SPLAT_DTYPE)
    table["position"] = _numpy(gaussians.means)[order]
    table["scale"] = np.exp(log_scales[order])
    rgb = np.clip(0.5 + SH_C0 * _numpy(gaussians.features_dc)[order], 0, 1)
    table["rgba"][:, :3] = _to_u8(rgb * 255)
    table["rgba"][:, 3] = _to_u8(_sigmoid(opacities[order]) * 255)
    table["rot"] = _to_u8(_unit_wxyz(_numpy(gaussians.quats)[order]) * 128 + 128)
    return table.tobytes()


# --- by suffix --------------------------------------------------------------------------

_ENCODERS = {".spz": spz_bytes, ".splat": splat_bytes}


def check_output_path(path: Path) -> None:
    """Raises NeuralGSError unless `write_gaussians` can write `path` (a known suffix, an
    existing folder): callers check before long work, so a typo costs nothing."""
    path = Path(path)
    if path.suffix.lower() not in EXPORT_FORMATS:
        raise NeuralGSError(f"{path}: unsupported output format '{path.suffix}' (use .ply, .spz or .splat)")
    if not path.parent.is_dir():
        raise NeuralGSError(f"{path}: output directory {path.parent} does not exist")


def write_gaussians(gaussians: Gaussians, path: Path) -> None:
    """Writes `gaussians` to `path` in the format its suffix names (.ply, .spz or .splat,
    any case), atomically: a failure leaves no file, not a partial one."""
    path = Path(path)
    suffix = path.suffix
    check_output_path(path)  # before encoding, which can take seconds for a large scene
    if suffix.lower() == ".ply":
        write_ply(gaussians, path)
        return
    try:
        data = _ENCODERS[suffix.lower()](gaussians)
    except NeuralGSError as err:  # the encoders don't know the path; name it
        raise NeuralGSError(f"{path}: {err}") from None
    atomic_write_bytes(path, data)

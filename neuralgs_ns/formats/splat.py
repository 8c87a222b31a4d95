"""antimatter15's .splat: no header, 32 bytes per Gaussian (position and activated scale as
float32 x3, RGBA bytes, the unit wxyz quaternion as bytes q * 128 + 128). No view-dependent
colour: SH bands above 0 are dropped on writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neuralgs_ns.errors import InputFileError
from neuralgs_ns.formats._arrays import byte_opacity_logit, gaussians_from_numpy, numpy32, sigmoid, to_u8, unit_wxyz
from neuralgs_ns.gaussians import SH_C0, Gaussians

SPLAT_DTYPE = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])


def splat_bytes(gaussians: Gaussians) -> bytes:
    """The .splat of `gaussians`, sorted by decreasing exp(sum of log scales) * sigmoid(opacity)
    (volume times opacity), the key of antimatter15/splat's convert.py, so viewers that stream
    the file show the big, opaque splats first. The key is compared in log space so huge scales
    don't overflow. Bytes are rounded to nearest where convert.py truncates: same decoder,
    half the error."""
    log_scales = numpy32(gaussians.scales)
    opacities = numpy32(gaussians.opacities[:, 0])
    log_key = log_scales.sum(axis=1) - np.logaddexp(0, -opacities)  # log(volume * sigmoid)
    order = np.argsort(-log_key, kind="stable")

    table = np.empty(len(order), dtype=SPLAT_DTYPE)
    table["position"] = numpy32(gaussians.means)[order]
    table["scale"] = np.exp(log_scales[order])
    rgb = np.clip(0.5 + SH_C0 * numpy32(gaussians.features_dc)[order], 0, 1)
    table["rgba"][:, :3] = to_u8(rgb * 255)
    table["rgba"][:, 3] = to_u8(sigmoid(opacities[order]) * 255)
    table["rot"] = to_u8(unit_wxyz(numpy32(gaussians.quats)[order]) * 128 + 128)
    return table.tobytes()


def read_splat(path: Path) -> Gaussians:
    """Gaussians of a .splat file: SH degree 0, colours as the DC coefficients that show them."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) % SPLAT_DTYPE.itemsize:
        raise InputFileError(path, f"not a .splat file: {len(data):,} bytes is not a whole number of "
                             f"{SPLAT_DTYPE.itemsize}-byte records")
    table = np.frombuffer(data, dtype=SPLAT_DTYPE)
    n = len(table)
    # A zero scale (a flat splat) keeps a finite log: the smallest normal float32.
    log_scales = np.log(np.maximum(table["scale"], np.finfo(np.float32).tiny))
    rgba = table["rgba"].astype(np.float64) / 255
    quats = unit_wxyz((table["rot"].astype(np.float64) - 128) / 128)  # all-128 (no rotation) -> identity
    return gaussians_from_numpy(table["position"], log_scales, quats, byte_opacity_logit(table["rgba"][:, 3]),
                                (rgba[:, :3] - 0.5) / SH_C0, np.zeros((n, 0, 3)))

"""PlayCanvas SOG, version 2: the version that splat-transform (2.x and 3.x) writes and reads.

A bundled .sog is a zip of meta.json and lossless WebP images. Every image but the SH palette's
holds one Gaussian per pixel, row-major from the top left, in the same order everywhere:
    means_l, means_u   low and high bytes of 16-bit positions, per axis a lerp between
                       meta's mins and maxs of sign(x) * log(|x| + 1)
    quats              "smallest three": the three components other than the largest
                       (largest made positive) as bytes of c * sqrt(2), alpha = 252 + its index
    scales             three bytes indexing meta's 256-entry codebook of log scales
    sh0                three bytes indexing the DC codebook, alpha = sigmoid(opacity) bytes
    shN_labels         a 16-bit index (R low, G high) into the palette of SH rest vectors,
    shN_centroids      whose pixels (64 palette entries a row, one pixel per coefficient)
                       index meta's SH codebook, RGB for the three channels.
Coordinates are the 3DGS PLY's, as given: no axis flip (the spec's and splat-transform's).
Gaussians are stored in Morton order of their positions, as splat-transform stores them: the
images then compress better; file order carries no meaning.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import torch

from neuralgs_ns.errors import InputFileError, NeuralGSError
from neuralgs_ns.formats._arrays import gaussians_from_numpy, logit, numpy32, sigmoid, to_u8, unit_wxyz
from neuralgs_ns.gaussians import Gaussians

SOG_VERSION = 2
CODEBOOK_SIZE = 256  # byte indices
PALETTE_ROW = 64  # palette entries per row of shN_centroids
SOG_ITERATIONS = 10  # k-means passes of the SH palette, as splat-transform's default
MORTON_BITS = 10  # grid bits per axis of the storage order
_QUAT_TAG = 252  # quats alpha = 252 + index (wxyz) of the largest component
_SQRT2 = math.sqrt(2.0)


# --- writing ------------------------------------------------------------------------------

def sog_bytes(gaussians: Gaussians, *, iterations: int = SOG_ITERATIONS, seed: int = 0) -> bytes:
    """The bundled SOG of `gaussians`. Scales and DC colours go through 256-entry codebooks (1D
    k-means over all three channels), SH rest vectors through a palette of k-means centroids
    (as many as splat-transform uses: 1024 * 2^k up to 65536, at most one per Gaussian),
    themselves through a 256-entry codebook; positions to 16 bits of log-space, rotations
    and opacities to 8 bits. Deterministic for a given seed."""
    from PIL import features

    if not features.check("webp"):
        raise NeuralGSError("this Pillow was built without WebP support, which SOG needs")
    n = len(gaussians)
    if n == 0:
        raise NeuralGSError("a SOG file cannot hold zero Gaussians")
    means = numpy32(gaussians.means).astype(np.float64)
    if not np.isfinite(means).all():
        raise NeuralGSError("some positions are NaN or infinite; SOG cannot store them")
    order = morton_order(gaussians.means)
    means = means[order]
    width = math.ceil(math.sqrt(n) / 4) * 4
    height = math.ceil(n / width / 4) * 4

    def image(*channels: np.ndarray) -> bytes:
        """A lossless WebP of width x height pixels: these [N] byte channels (RGB, optionally
        A; A is 255 otherwise), trailing pixels (0, 0, 0, 255)."""
        rgba = np.zeros((width * height, 4), np.uint8)
        rgba[:, 3] = 255
        for c, values in enumerate(channels):
            rgba[:n, c] = values
        return _webp(rgba.reshape(height, width, 4))

    files = {}
    log_means = np.sign(means) * np.log1p(np.abs(means))
    mins, maxs = log_means.min(axis=0), log_means.max(axis=0)
    span = maxs - mins
    q = np.rint(65535 * (log_means - mins) / np.where(span > 0, span, 1)).astype(np.uint16)
    files["means_l.webp"] = image(*(q & 0xFF).T)
    files["means_u.webp"] = image(*(q >> 8).T)

    files["quats.webp"] = image(*_pack_quats(unit_wxyz(numpy32(gaussians.quats)[order].astype(np.float64))))

    scale_codebook, scale_labels = codebook(numpy32(gaussians.scales)[order])
    files["scales.webp"] = image(*scale_labels.reshape(n, 3).T)

    dc_codebook, dc_labels = codebook(numpy32(gaussians.features_dc)[order])
    alpha = to_u8(sigmoid(numpy32(gaussians.opacities[:, 0])[order]) * 255)
    files["sh0.webp"] = image(*dc_labels.reshape(n, 3).T, alpha)

    meta = {
        "version": SOG_VERSION,
        "asset": {"generator": "neuralgs_ns"},
        "count": n,
        "means": {"mins": mins.tolist(), "maxs": maxs.tolist(), "files": ["means_l.webp", "means_u.webp"]},
        "scales": {"codebook": scale_codebook.tolist(), "files": ["scales.webp"]},
        "quats": {"files": ["quats.webp"]},
        "sh0": {"codebook": dc_codebook.tolist(), "files": ["sh0.webp"]},
    }
    degree = gaussians.sh_degree
    if degree > 0:
        rest = numpy32(gaussians.features_rest)[order]  # [N, K, 3]
        k = rest.shape[1]
        # Channel-major rows (all red coefficients, then green, then blue), as the PLY's f_rest.
        vectors = np.ascontiguousarray(rest.transpose(0, 2, 1).reshape(n, 3 * k))
        centroids, labels = palette(vectors, palette_size(n), iterations, np.random.default_rng(seed))
        sh_codebook, sh_labels = codebook(centroids)
        count = len(centroids)
        cells = np.zeros((math.ceil(count / PALETTE_ROW) * PALETTE_ROW, k, 4), np.uint8)
        cells[:, :, 3] = 255
        cells[:count, :, :3] = sh_labels.reshape(count, 3, k).transpose(0, 2, 1)
        files["shN_centroids.webp"] = _webp(cells.reshape(-1, PALETTE_ROW * k, 4))
        files["shN_labels.webp"] = image(labels & 0xFF, labels >> 8, np.zeros(n, np.uint8))
        meta["shN"] = {"count": count, "bands": degree, "codebook": sh_codebook.tolist(),
                       "files": ["shN_centroids.webp", "shN_labels.webp"]}
    files["meta.json"] = json.dumps(meta).encode()

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:  # WebP is compressed already
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)  # reproducible
    return buf.getvalue()


def _webp(rgba: np.ndarray) -> bytes:
    """Lossless WebP of an [H, W, 4] byte image. exact=True: libwebp would otherwise alter the
    RGB of fully transparent pixels, and here alpha is data (an opacity of 0), not coverage."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="WEBP", lossless=True, exact=True)
    return buf.getvalue()


def _pack_quats(q: np.ndarray):
    """R, G, B, A bytes of unit wxyz quaternions [N, 4] (see the module docstring)."""
    largest = np.argmax(np.abs(q), axis=1)
    rows = np.arange(len(q))
    q = q * np.where(q[rows, largest] < 0, -1.0, 1.0)[:, None]
    others = np.array([[j for j in range(4) if j != i] for i in range(4)])[largest]  # [N, 3]
    stored = to_u8(255 * (np.take_along_axis(q, others, axis=1) * _SQRT2 * 0.5 + 0.5))
    return (*stored.T, (_QUAT_TAG + largest).astype(np.uint8))


def morton_order(means: torch.Tensor) -> np.ndarray:
    """Indices that sort positions [N, 3] along a Z-order curve through their bounding box:
    the codec's Morton keys of a 10-bit grid."""
    from neuralgs_ns.codec.quantize import morton_codes, position_grid, quantize_positions

    means = means.detach().cpu()
    codes = quantize_positions(means, position_grid(means, MORTON_BITS), MORTON_BITS)
    return torch.argsort(morton_codes(codes), stable=True).numpy()


def palette_size(n: int) -> int:
    """splat-transform's SH palette size for n Gaussians: 1024 * 2^floor(log2(n / 1024)),
    at most 65536 (16-bit labels); at most n."""
    return int(min(64, 2.0 ** math.floor(math.log2(n / 1024))) * 1024)


def codebook(values: np.ndarray, size: int = CODEBOOK_SIZE, iterations: int = 20):
    """(codebook [size] float32 ascending, labels uint8 [values.size]): a 1D k-means (Lloyd's,
    exact for 1D: nearest = between midpoints) of all `values`, each labelled with its
    nearest entry of the float32 codebook a reader sees. Fewer distinct values than `size`
    are kept exactly."""
    v = np.asarray(values, np.float64).ravel()
    ordered = np.sort(v)
    distinct = np.unique(ordered)
    if len(distinct) <= size:
        centres = np.concatenate([distinct, np.full(size - len(distinct), distinct[-1] if len(distinct) else 0.0)])
    else:  # start evenly spaced in rank among the distinct values: every entry begins in use
        centres = distinct[np.rint(np.linspace(0, len(distinct) - 1, size)).astype(np.int64)]
        prefix = np.concatenate([[0.0], np.cumsum(ordered)])
        for _ in range(iterations):
            # Each cluster is a run of the sorted values: its ends are where the midpoints fall.
            cuts = np.concatenate([[0], np.searchsorted(ordered, (centres[1:] + centres[:-1]) / 2, "right"), [len(v)]])
            counts = np.diff(cuts)
            updated = np.where(counts > 0, np.diff(prefix[cuts]) / np.maximum(counts, 1), centres)
            if np.array_equal(updated, centres):
                break
            centres = updated
    book = centres.astype(np.float32)
    wide = book.astype(np.float64)
    return book, np.searchsorted((wide[1:] + wide[:-1]) / 2, v).astype(np.uint8)


def palette(x: np.ndarray, k: int, iterations: int, rng: np.random.Generator):
    """(centroids [<= k, D], labels [N]) of SH rest vectors x [N, D]: k-means, in two levels
    once k is large (sqrt(k) coarse clusters, each split into entries in proportion to its
    size), so a million Gaussians and 65536 entries cost about what 2 * sqrt(k) entries
    would."""
    coarse = int(math.isqrt(k))
    if k <= 1024:
        return _kmeans(x, k, iterations, rng)
    sample = x[rng.choice(len(x), min(len(x), 64 * 1024), replace=False)]
    coarse_centroids, _ = _kmeans(sample, coarse, iterations, rng)
    coarse_labels = _nearest(x, coarse_centroids)
    members = np.argsort(coarse_labels, kind="stable")
    sizes = np.bincount(coarse_labels, minlength=coarse)
    # Entries per coarse cluster: in proportion to its size, at least one, at most its size;
    # the total stays within k.
    shares = np.minimum(np.where(sizes > 0, (k - coarse) * sizes // len(x) + 1, 0), sizes)
    centroids, labels, start = [], np.empty(len(x), np.int64), 0
    for size, share in zip(sizes, shares):
        if size == 0:
            continue
        idx = members[start:start + size]
        start += size
        # Random seeds: k-means++ seeding would be most of the time here (a pass over the rows
        # per entry), and the coarse level has already kept separate groups apart.
        c, local = _kmeans(x[idx], int(share), iterations, rng, seeded=False)
        labels[idx] = local + sum(len(p) for p in centroids)
        centroids.append(c)
    return np.concatenate(centroids), labels


def _kmeans(x: np.ndarray, k: int, iterations: int, rng: np.random.Generator, seeded: bool = True):
    """Lloyd's k-means from k-means++ seeds (seeded) or k random rows; an emptied cluster
    keeps its centre."""
    x = x.astype(np.float32)
    if len(x) <= k:
        return x, np.arange(len(x))
    centroids = _seeds(x, k, rng) if seeded else x[rng.choice(len(x), k, replace=False)]
    labels = None
    for _ in range(iterations):
        previous, labels = labels, _nearest(x, centroids)
        if previous is not None and np.array_equal(previous, labels):
            return centroids, labels
        counts = np.bincount(labels, minlength=k)
        sums = np.stack([np.bincount(labels, weights=x[:, d], minlength=k) for d in range(x.shape[1])], axis=1)
        used = counts > 0
        centroids[used] = (sums[used] / counts[used, None]).astype(np.float32)
    return centroids, _nearest(x, centroids)


def _seeds(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next centre drawn with probability in proportion to the squared
    distance to the nearest centre so far, so that separate groups of rows get centres of their
    own (random rows would leave small groups to share one)."""
    chosen = np.empty(k, np.int64)
    chosen[0] = rng.integers(len(x))
    d2 = ((x - x[chosen[0]]) ** 2).sum(axis=1, dtype=np.float64)
    for i in range(1, k):
        cumulative = np.cumsum(d2)
        chosen[i] = min(np.searchsorted(cumulative, rng.random() * cumulative[-1], "right"), len(x) - 1)
        d2 = np.minimum(d2, ((x - x[chosen[i]]) ** 2).sum(axis=1, dtype=np.float64))
    return x[chosen].copy()


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid of each row of x, in blocks (|c|^2 - 2 x.c, one matrix
    product a block)."""
    c = centroids.astype(np.float32)
    c_sq = (c * c).sum(axis=1)
    block = max(1, (1 << 22) // max(1, len(c)))
    out = np.empty(len(x), np.int64)
    for start in range(0, len(x), block):
        out[start:start + block] = np.argmin(c_sq[None, :] - 2 * (x[start:start + block].astype(np.float32) @ c.T),
                                             axis=1)
    return out


# --- reading ------------------------------------------------------------------------------

def read_sog(path: Path) -> Gaussians:
    """Gaussians of a bundled SOG (version 2)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            entries = {name: zf.read(name) for name in zf.namelist()}
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise InputFileError(path, f"not a SOG bundle (not a readable zip: {err})") from None
    if "meta.json" not in entries:
        raise InputFileError(path, "not a SOG bundle (no meta.json in the zip)")
    try:
        meta = json.loads(entries["meta.json"])
        version = meta.get("version")
    except (ValueError, AttributeError) as err:
        raise InputFileError(path, f"damaged SOG meta.json ({err})") from None
    if version != SOG_VERSION:
        raise InputFileError(path, f"SOG version {version or 1} is not supported (version {SOG_VERSION} is; "
                             "splat-transform converts older files)")
    try:
        return _decode(path, meta, entries)
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise InputFileError(path, f"damaged SOG bundle ({type(err).__name__}: {err})") from None


def _decode(path: Path, meta: dict, entries: dict) -> Gaussians:
    n = int(meta["count"])

    def pixels(name: str, count: int = n) -> np.ndarray:
        """The first `count` RGBA pixels [count, 4] of an image named in meta.json."""
        from PIL import Image

        if name not in entries:
            raise InputFileError(path, f"SOG bundle lacks {name}, which meta.json names")
        try:
            with Image.open(io.BytesIO(entries[name])) as img:
                rgba = np.asarray(img.convert("RGBA")).reshape(-1, 4)
        except OSError as err:
            raise InputFileError(path, f"{name} in the SOG bundle is not a readable image ({err})") from None
        if len(rgba) < count:
            raise InputFileError(path, f"{name} has {len(rgba):,} pixels for {count:,} Gaussians")
        return rgba[:count]

    lo, hi = (pixels(name)[:, :3].astype(np.int64) for name in meta["means"]["files"][:2])
    mins, maxs = np.asarray(meta["means"]["mins"], np.float64), np.asarray(meta["means"]["maxs"], np.float64)
    span = np.where(maxs - mins != 0, maxs - mins, 1)
    log_means = mins + span * (lo | (hi << 8)) / 65535
    means = np.sign(log_means) * np.expm1(np.abs(log_means))

    quats = _unpack_quats(pixels(meta["quats"]["files"][0]))
    scales = np.asarray(meta["scales"]["codebook"], np.float32)[pixels(meta["scales"]["files"][0])[:, :3]]
    sh0 = pixels(meta["sh0"]["files"][0])
    dc = np.asarray(meta["sh0"]["codebook"], np.float32)[sh0[:, :3]]
    opacities = logit(sh0[:, 3] / 255.0, 1e-6)  # the spec's clamp

    shn = meta.get("shN")
    if not shn:
        rest = np.zeros((n, 0, 3), np.float32)
    else:
        k = (int(shn["bands"]) + 1) ** 2 - 1
        count = int(shn["count"])
        labels_rgba = pixels(shn["files"][1])
        labels = labels_rgba[:, 0].astype(np.int64) | (labels_rgba[:, 1].astype(np.int64) << 8)
        if labels.size and labels.max() >= count:
            raise InputFileError(path, f"SH palette label {labels.max()} beyond the palette's {count} entries")
        cells = pixels(shn["files"][0], math.ceil(count / PALETTE_ROW) * PALETTE_ROW * k)
        cells = cells.reshape(-1, k, 4)[:count, :, :3]  # [palette entry, coefficient, channel]
        rest = np.asarray(shn["codebook"], np.float32)[cells[labels]]
    return gaussians_from_numpy(means, scales, quats, opacities, dc, rest)


def _unpack_quats(rgba: np.ndarray) -> np.ndarray:
    """wxyz quaternions of quats.webp pixels; an alpha outside 252-255 decodes to the identity."""
    stored = (rgba[:, :3].astype(np.float64) / 255 * 2 - 1) / _SQRT2
    tag = rgba[:, 3].astype(np.int64) - _QUAT_TAG
    valid = (tag >= 0) & (tag <= 3)
    largest = np.where(valid, tag, 0)
    others = np.array([[j for j in range(4) if j != i] for i in range(4)])[largest]
    q = np.zeros((len(rgba), 4))
    np.put_along_axis(q, others, stored, axis=1)
    rows = np.arange(len(q))
    q[rows, largest] = np.sqrt(np.maximum(0, 1 - (q ** 2).sum(axis=1)))
    q[~valid] = (1, 0, 0, 0)
    return q

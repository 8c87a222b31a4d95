"""The .ngs bitstream: what `neuralgs compress` writes and `neuralgs decode` reads.

Layout (little-endian throughout):

    magic        8 bytes  b"\\x89NGS\\r\\n\\x1a\\n" (PNG-style: catches text-mode mangling)
    version      u16      FORMAT_VERSION
    sections     u16      number of sections that follow
    section      tag (4 ASCII bytes) | payload length u32 | CRC-32 of the payload u32 | payload
      HEAD  counts, SH degree, MLP shape and activation, weight precision, position bits,
            position grid (origin, step) and the bounding box of the positions
      NORM  the attribute normalisation table: mins [D], maxs [D] float32
      CLST  cluster sizes [K] u32, largest first
      PMOD  the position coder's exponent model (`positions.ExponentModel`)
      RTAB  the residual table (`residuals.ResidualTable`; version 2 on, zero columns allowed)
      then, for each cluster k in order:
      CPOS  cluster k's positions (`positions.encode_cluster`)
      CMLP  cluster k's MLP (`weights.encode_cluster`)
      CRES  cluster k's residual codes (`residuals.encode_cluster`), when RTAB has columns

Besides its position, a Gaussian stores only the residual codes of the table's columns (none
by default in the paper's method): its attributes come from its cluster's MLP plus those
corrections, and the cluster boxes the MLPs normalise positions with are recomputed from the
decoded positions. Version 1 files (no RTAB, no CRES) are read as well.
Because each cluster's sections follow the tables, a reader can stop after any cluster and
render what it has (`max_clusters`), e.g. while a file streams in.

The model trains on exactly what the file holds (positions snapped to the grid and stored in
this order, MLP weights evaluated at their stored precision), so decoding is bit-exact.
"""

from __future__ import annotations

import json
import struct
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from neuralgs_ns.codec import positions as position_coder
from neuralgs_ns.codec import residuals as residual_coder
from neuralgs_ns.codec import weights as weight_coder
from neuralgs_ns.codec.quantize import (MAX_POSITION_BITS, dequantize_positions, dequantize_residuals, morton_codes,
                                        morton_decode, quantize_positions, residual_codes)
from neuralgs_ns.compress.clustering import attribute_count
from neuralgs_ns.errors import InputFileError, NeuralGSError
from neuralgs_ns.gaussians import Gaussians
from neuralgs_ns.utils import atomic_write_bytes

MAGIC = b"\x89NGS\r\n\x1a\n"
FORMAT_VERSION = 2
ACTIVATIONS = ("tanh", "relu", "silu")  # index = the format's code
_PREAMBLE = struct.Struct("<8sHH")
_SECTION = struct.Struct("<4sII")
SECTION_FRAMING_BYTES = _SECTION.size  # tag, length and checksum before every section's payload
# n_gaussians, n_clusters, sh_degree, position_bits, weight precision, activation, depth,
# n_frequencies, width, attribute count, grid origin [3], grid step [3], bbox min [3], bbox max [3]
_HEAD = struct.Struct("<IIBBBBBBHH12f")
# A file must spend at least this many bits per Gaussian on average; a header claiming more
# Gaussians is corrupt (checked before anything is allocated for them).
_MIN_BITS_PER_GAUSSIAN = 0.5


@dataclass
class CompressedScene:
    """Positions grouped by cluster (Morton order within each), cluster labels, the attribute
    normalisation table and the per-cluster MLPs as the file stores them: all a decoder needs."""

    positions: Tensor  # [N, 3] float32, on position_grid
    labels: Tensor  # [N] int64, non-decreasing
    position_grid: Tensor  # [2, 3] origin and step
    position_bits: int
    attribute_mins: Tensor  # [D]
    attribute_maxs: Tensor  # [D]
    field_state: Dict[str, Tensor]  # float32 holding the stored values (weights.l, biases.l, bounds_*)
    field_activation: str
    weight_precision: str  # "float16" | "int8"
    sh_degree: int
    residual_columns: Optional[Tensor] = None  # [C] int64 attribute columns with corrections (None: none)
    residual_steps: Optional[Tensor] = None  # [C] float32
    residual_codes: Optional[Tensor] = None  # [N, C] int64

    @property
    def n_residual_columns(self) -> int:
        return 0 if self.residual_columns is None else int(self.residual_columns.numel())

    @property
    def n_clusters(self) -> int:
        return int(self.field_state["weights.0"].shape[0])

    @classmethod
    def from_model(cls, model) -> "CompressedScene":
        """From a trained `NeuralGSModel`: its positions in storage order, its MLPs rounded to
        their stored precision (what the model evaluates while training)."""
        precision = model.config.field_precision
        if precision not in weight_coder.WEIGHT_PRECISIONS:
            raise NeuralGSError(f"{precision} MLP weights cannot be stored; train with "
                                f"--pipeline.model.field-precision int8 or float16")
        state = {k: v.detach().cpu().float() for k, v in model.field.state_dict().items()}
        state = {k: weight_coder.stored_weights(v, precision) if k.startswith("weights.")
                 else v.half().float() if k.startswith("biases.") else v for k, v in state.items()}
        grid = model.position_grid.detach().cpu()
        steps = model.residual_steps.detach().cpu().float()
        return cls(model.positions.detach().cpu(), model.labels.detach().cpu(), grid, _grid_bits(model.positions, grid),
                   model.attribute_mins.detach().cpu().float(), model.attribute_maxs.detach().cpu().float(), state,
                   model.config.field_activation, precision, int(model.config.sh_degree),
                   model.residual_columns.detach().cpu().long(), steps,
                   residual_codes(model.residuals.detach().cpu(), steps))

    # --- writing -------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        n, k = self.positions.shape[0], self.n_clusters
        if n == 0:
            raise NeuralGSError("the scene has no Gaussians: nothing to store")
        codes = quantize_positions(self.positions, self.position_grid, self.position_bits)
        if not torch.equal(dequantize_positions(codes, self.position_grid), self.positions.float()):
            # Training used these exact positions; storing others would silently change the scene.
            raise NeuralGSError("positions are not on the model's position grid (a checkpoint from an older version?)")
        sizes = torch.bincount(self.labels, minlength=k)
        if len(sizes) != k or int(sizes.min()) < 1 or not bool((self.labels[1:] >= self.labels[:-1]).all()):
            raise NeuralGSError("positions must be grouped by cluster, every cluster non-empty")
        from neuralgs_ns.compress.field import cluster_bounds

        bounds = cluster_bounds(self.positions.float(), self.labels, k)
        if not (torch.equal(bounds[0], self.field_state["bounds_min"]) and
                torch.equal(bounds[1], self.field_state["bounds_max"])):
            raise NeuralGSError("the MLPs' cluster boxes do not match the positions: the decoder could not rebuild them")
        keys = morton_codes(codes).numpy()
        starts = np.concatenate([[0], np.cumsum(sizes.numpy())])
        clusters = [keys[starts[i] : starts[i + 1]] for i in range(k)]
        if any(np.any(np.diff(c) < 0) for c in clusters):
            # The order is part of the model (ns-export lists Gaussians in it); sorting here
            # would make the file disagree with the model it came from.
            raise NeuralGSError("positions are not in storage order (Morton order within each cluster)")
        model = position_coder.ExponentModel.fit(clusters, self.position_bits)

        layer_shapes = weight_coder.layer_sizes(self.field_state)
        depth = len(layer_shapes)
        width = layer_shapes[0][1] if depth > 1 else 0
        n_frequencies = (layer_shapes[0][0] - 3) // 6
        lo = self.positions.min(dim=0).values.tolist()
        hi = self.positions.max(dim=0).values.tolist()
        head = _HEAD.pack(n, k, self.sh_degree, self.position_bits, weight_coder.WEIGHT_PRECISIONS.index(
            self.weight_precision), ACTIVATIONS.index(self.field_activation), depth, n_frequencies, width,
            self.attribute_mins.numel(), *self.position_grid.reshape(-1).tolist(), *lo, *hi)
        residuals = self.residual_table()
        sections = [(b"HEAD", head),
                    (b"NORM", torch.cat([self.attribute_mins, self.attribute_maxs]).float().numpy().astype("<f4").tobytes()),
                    (b"CLST", sizes.numpy().astype("<u4").tobytes()),
                    (b"PMOD", model.to_bytes()),
                    (b"RTAB", residuals.to_bytes())]
        codes = self.residual_codes.numpy() if residuals.n_columns else None
        for i, cluster_keys in enumerate(clusters):
            sections.append((b"CPOS", position_coder.encode_cluster(cluster_keys, model)))
            sections.append((b"CMLP", weight_coder.encode_cluster(self.field_state, i, self.weight_precision)))
            if codes is not None:
                sections.append((b"CRES", residual_coder.encode_cluster(codes[starts[i] : starts[i + 1]], residuals)))
        out = [_PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(sections))]
        for tag, payload in sections:
            out.append(_SECTION.pack(tag, len(payload), zlib.crc32(payload)) + payload)
        return b"".join(out)

    def residual_table(self) -> residual_coder.ResidualTable:
        """The RTAB section's table: the columns, their steps and their codes' histograms."""
        if not self.n_residual_columns:
            return residual_coder.ResidualTable.fit(np.zeros((0, 0), dtype=np.int64), [], [])
        return residual_coder.ResidualTable.fit(self.residual_codes.numpy(), self.residual_columns.tolist(),
                                                self.residual_steps.tolist())

    def save(self, path: Path) -> int:
        """Writes the file (atomically) and returns its size in bytes."""
        data = self.to_bytes()
        atomic_write_bytes(Path(path), data)
        return len(data)

    # --- reading -------------------------------------------------------------------------

    @classmethod
    def from_bytes(cls, data: bytes, path: Path, max_clusters: Optional[int] = None) -> "CompressedScene":
        """Parses a file's bytes; with `max_clusters`, only the first (largest) clusters, read
        from the file's head. Any problem raises `InputFileError` naming `path`."""
        return _parse(data, path, max_clusters)[0]

    @classmethod
    def load(cls, path: Path, max_clusters: Optional[int] = None) -> "CompressedScene":
        return cls.from_bytes(_file_bytes(path), Path(path), max_clusters)

    def decode(self) -> Gaussians:
        """The Gaussians: every position through its cluster's MLP, the normalisation undone."""
        from neuralgs_ns.compress.field import decode_gaussians, field_from_state_dict

        # The state holds the stored values already: evaluate them as they are.
        field = field_from_state_dict(self.field_state, self.field_activation, "float32")
        residuals = None if not self.n_residual_columns else dequantize_residuals(self.residual_codes,
                                                                                 self.residual_steps)
        with torch.no_grad():
            return decode_gaussians(field, self.positions, self.labels, self.attribute_mins, self.attribute_maxs,
                                    self.sh_degree, self.residual_columns, residuals)


def progressive_cluster_counts(n_clusters: int) -> List[int]:
    """Cluster counts a progressive decode shows: 1, 2, 4, ... then all of them."""
    counts, k = [], 1
    while k < n_clusters:
        counts.append(k)
        k *= 2
    return counts + [n_clusters]


def decode_progressively(path: Path) -> Iterator[Tuple[int, int, Gaussians]]:
    """(clusters decoded, clusters in the file, their Gaussians) for the first 1, 2, 4, ...
    clusters and finally all: a preview that fills in as the file is decoded, largest
    clusters first. The last item equals `CompressedScene.load(path).decode()`."""
    path = Path(path)
    data = _file_bytes(path)
    with _reporting_corruption(path):
        n_clusters = _Reader(data, path).header()["k"]
    for k in progressive_cluster_counts(n_clusters):
        yield k, n_clusters, CompressedScene.from_bytes(data, path, None if k == n_clusters else k).decode()


def planned_bytes(positions: Tensor, labels: Tensor, grid: Tensor, bits: int, n_attributes: int,
                  mlp_bytes_per_cluster: int, residual_codes: Optional[np.ndarray] = None,
                  residual_columns: Sequence[int] = (), residual_steps: Sequence[float] = ()) -> Dict[str, int]:
    """What a file of these positions ([N, 3] on `grid`, grouped by `labels` in storage order),
    MLPs of `mlp_bytes_per_cluster` each and residual codes [N, C] would take, by part
    ('positions', 'mlp_weights', 'residuals', 'other': tables, header and framing), laid out
    as `to_bytes` lays it out. Exact but for the residual streams, which are priced at their
    ideal code length rounded up to whole ANS words (a word over at most, per cluster)."""
    sizes = torch.bincount(labels.cpu(), minlength=int(labels.max()) + 1).numpy()
    k = len(sizes)
    keys = morton_codes(quantize_positions(positions.cpu(), grid.cpu(), bits)).numpy()
    starts = np.concatenate([[0], np.cumsum(sizes)])
    clusters = [np.sort(keys[starts[i] : starts[i + 1]]) for i in range(k)]  # storage order on this grid
    model = position_coder.ExponentModel.fit(clusters, bits)
    parts = {"positions": len(model.to_bytes()) + sum(len(position_coder.encode_cluster(c, model)) for c in clusters),
             "mlp_weights": k * mlp_bytes_per_cluster, "residuals": 0}
    n_sections = 5 + 2 * k
    if len(residual_columns):
        codes = np.asarray(residual_codes, dtype=np.int64)
        table = residual_coder.ResidualTable.fit(codes, list(residual_columns), list(residual_steps))
        parts["residuals"] = residual_coder.planned_bytes(codes, table, sizes)
        n_sections += k
    else:
        parts["residuals"] = 2  # RTAB: an empty table
    parts["other"] = _PREAMBLE.size + _SECTION.size * n_sections + _HEAD.size + 8 * n_attributes + 4 * k
    return parts


def _grid_bits(positions: Tensor, grid: Tensor) -> int:
    """The bits of the grid `positions` were snapped to: its largest code spans the box."""
    codes = quantize_positions(positions.detach().cpu(), grid, MAX_POSITION_BITS)
    return max(1, int(codes.max()).bit_length()) if codes.numel() else 1


def _file_bytes(path: Path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "no such file")
    return path.read_bytes()


@contextmanager
def _reporting_corruption(path: Path):
    """A decoder must not crash on hostile bytes: anything but our own errors is reported as a
    corrupt file, without a traceback."""
    try:
        yield
    except NeuralGSError:
        raise
    except Exception as err:
        raise InputFileError(path, f"corrupt file ({type(err).__name__}: {err})") from None


def _parse(data: bytes, path: Path, max_clusters: Optional[int]) -> Tuple[CompressedScene, "_Reader"]:
    reader = _Reader(data, path)
    with _reporting_corruption(path):
        return reader.scene(max_clusters), reader


class _Reader:
    """Walks a file's sections, checking each one's bounds and checksum before use."""

    def __init__(self, data: bytes, path: Path):
        self.data, self.path, self.offset = data, path, _PREAMBLE.size
        if len(data) < len(MAGIC) and MAGIC.startswith(data[: len(MAGIC)]):
            raise InputFileError(path, f"truncated: {len(data)} bytes, not even a .ngs preamble")
        if data[: len(MAGIC)] != MAGIC:
            raise InputFileError(path, "not a .ngs file (wrong magic bytes)")
        if len(data) < _PREAMBLE.size:
            raise InputFileError(path, "truncated: the file ends inside its preamble")
        _, self.version, self.n_sections = _PREAMBLE.unpack_from(data)
        if self.version > FORMAT_VERSION:
            raise InputFileError(path, f".ngs format version {self.version} is newer than this neuralgs_ns "
                                       f"reads ({FORMAT_VERSION}); upgrade neuralgs_ns")
        if self.version < 1:
            raise InputFileError(path, f"invalid .ngs format version {self.version}")
        self.read_sections = 0
        self.sections: List[Tuple[str, int, int]] = []  # (tag, payload bytes, framing bytes) for info

    def section(self, expected: str) -> bytes:
        if self.read_sections >= self.n_sections:
            raise InputFileError(self.path, f"corrupt: section {expected} missing (the preamble lists "
                                            f"{self.n_sections} sections)")
        if self.offset + _SECTION.size > len(self.data):
            raise InputFileError(self.path, f"truncated: the file ends before section {expected}")
        tag, length, crc = _SECTION.unpack_from(self.data, self.offset)
        if tag != expected.encode():
            raise InputFileError(self.path, f"corrupt: expected section {expected} at byte {self.offset}, "
                                            f"found {tag!r}")
        start = self.offset + _SECTION.size
        if start + length > len(self.data):
            raise InputFileError(self.path, f"truncated: section {expected} ends {start + length - len(self.data)} "
                                            f"bytes past the end of the file")
        payload = self.data[start : start + length]
        if zlib.crc32(payload) != crc:
            raise InputFileError(self.path, f"corrupt: checksum mismatch in section {expected} at byte {self.offset}")
        self.offset = start + length
        self.read_sections += 1
        self.sections.append((expected, length, _SECTION.size))
        return payload

    def header(self) -> dict:
        head = self.section("HEAD")
        if len(head) != _HEAD.size:
            raise InputFileError(self.path, f"corrupt: HEAD has {len(head)} bytes, expected {_HEAD.size}")
        values = _HEAD.unpack(head)
        (n, k, sh_degree, bits, precision, activation, depth, n_frequencies, width, n_attributes) = values[:10]
        floats = np.asarray(values[10:], dtype=np.float32).reshape(4, 3)
        problems = [
            (n == 0, "it holds no Gaussians"),
            (not 1 <= k <= n, f"{k} clusters for {n} Gaussians"),
            (n * _MIN_BITS_PER_GAUSSIAN > 8 * len(self.data), f"{n} Gaussians cannot fit in {len(self.data)} bytes"),
            (sh_degree > 4, f"SH degree {sh_degree}"),
            (not 1 <= bits <= MAX_POSITION_BITS, f"{bits} position bits"),
            (precision >= len(weight_coder.WEIGHT_PRECISIONS), f"unknown weight precision code {precision}"),
            (activation >= len(ACTIVATIONS), f"unknown activation code {activation}"),
            (depth < 1 or (depth > 1) != (width > 0), f"MLP depth {depth}, width {width}"),
            (n_attributes != attribute_count(sh_degree), f"{n_attributes} attributes for SH degree {sh_degree}"),
            (not np.isfinite(floats).all() or (floats[1] <= 0).any(), "invalid position grid"),
        ]
        for bad, problem in problems:
            if bad:
                raise InputFileError(self.path, f"corrupt header: {problem}")
        return dict(n=n, k=k, sh_degree=sh_degree, bits=bits, precision=weight_coder.WEIGHT_PRECISIONS[precision],
                    activation=ACTIVATIONS[activation], depth=depth, n_frequencies=n_frequencies, width=width,
                    n_attributes=n_attributes, grid=torch.from_numpy(floats[:2].copy()),
                    bbox=(floats[2].tolist(), floats[3].tolist()))

    def residual_table(self, head: dict) -> residual_coder.ResidualTable:
        if self.version < 2:
            return residual_coder.ResidualTable.fit(np.zeros((0, 0), dtype=np.int64), [], [])
        return residual_coder.ResidualTable.from_bytes(self.section("RTAB"), head["n_attributes"])

    def tables(self, head: dict) -> Tuple[Tensor, Tensor, np.ndarray, position_coder.ExponentModel]:
        norm = np.frombuffer(self.section("NORM"), dtype="<f4").astype(np.float32)
        if norm.size != 2 * head["n_attributes"]:
            raise InputFileError(self.path, f"corrupt: NORM holds {norm.size} values, expected "
                                            f"{2 * head['n_attributes']}")
        sizes = np.frombuffer(self.section("CLST"), dtype="<u4").astype(np.int64)
        if len(sizes) != head["k"] or sizes.min() < 1 or sizes.sum() != head["n"]:
            raise InputFileError(self.path, "corrupt: cluster sizes do not match the header")
        model = position_coder.ExponentModel.from_bytes(self.section("PMOD"), head["bits"])
        mins, maxs = torch.from_numpy(norm[: head["n_attributes"]].copy()), torch.from_numpy(norm[head["n_attributes"]:].copy())
        return mins, maxs, sizes, model

    def scene(self, max_clusters: Optional[int]) -> CompressedScene:
        head = self.header()
        mins, maxs, sizes, model = self.tables(head)
        residual_table = self.residual_table(head)
        n_in = 3 + 6 * head["n_frequencies"]
        layer_sizes = [(n_in if layer == 0 else head["width"], head["n_attributes"] if layer == head["depth"] - 1
                        else head["width"]) for layer in range(head["depth"])]
        k_read = head["k"] if max_clusters is None else max(0, min(max_clusters, head["k"]))
        if k_read == 0:
            raise NeuralGSError(f"{self.path}: --max-clusters must be at least 1")
        codes, layers, residual_blocks = [], [], []
        for i in range(k_read):
            keys = position_coder.decode_cluster(self.section("CPOS"), int(sizes[i]), model, head["bits"])
            codes.append(morton_decode(torch.from_numpy(keys)))
            layers.append(weight_coder.decode_cluster(self.section("CMLP"), layer_sizes, head["precision"]))
            if residual_table.n_columns:
                residual_blocks.append(residual_coder.decode_cluster(self.section("CRES"), int(sizes[i]), residual_table))
        if max_clusters is None and (self.read_sections != self.n_sections or self.offset != len(self.data)):
            raise InputFileError(self.path, f"corrupt: {len(self.data) - self.offset} unexpected bytes after the "
                                            f"last cluster")
        positions = dequantize_positions(torch.cat(codes), head["grid"])
        labels = torch.repeat_interleave(torch.arange(k_read), torch.from_numpy(sizes[:k_read]))
        from neuralgs_ns.compress.field import cluster_bounds

        bounds_min, bounds_max = cluster_bounds(positions, labels, k_read)
        state = {"bounds_min": bounds_min, "bounds_max": bounds_max}
        for layer in range(head["depth"]):
            state[f"weights.{layer}"] = torch.stack([cluster[layer][0] for cluster in layers])
            state[f"biases.{layer}"] = torch.stack([cluster[layer][1] for cluster in layers])[:, None, :]
        residuals = {}
        if residual_table.n_columns:
            residuals = dict(residual_columns=torch.from_numpy(residual_table.columns.copy()),
                             residual_steps=torch.from_numpy(residual_table.steps.copy()),
                             residual_codes=torch.from_numpy(np.concatenate(residual_blocks)))
        return CompressedScene(positions, labels, head["grid"], head["bits"], mins, maxs, state, head["activation"],
                               head["precision"], head["sh_degree"], **residuals)


def read_info(path: Path) -> dict:
    """The size breakdown of a .ngs file by section, with bits per Gaussian (`neuralgs info`).
    Reads and checks the whole file."""
    path = Path(path)
    data = _file_bytes(path)
    scene, reader = _parse(data, path, None)
    groups = {"HEAD": "header", "NORM": "normalisation_table", "CLST": "cluster_table", "PMOD": "positions",
              "CPOS": "positions", "CMLP": "mlp_weights", "RTAB": "residuals", "CRES": "residuals"}
    breakdown = {"preamble": _PREAMBLE.size, "header": 0, "normalisation_table": 0, "cluster_table": 0,
                 "positions": 0, "mlp_weights": 0, "residuals": 0, "section_framing": 0}
    for tag, length, framing in reader.sections:
        breakdown[groups[tag]] += length
        breakdown["section_framing"] += framing
    n = scene.positions.shape[0]
    sizes = torch.bincount(scene.labels).tolist()
    parameters = sum(v[0].numel() for name, v in scene.field_state.items() if not name.startswith("bounds"))
    return {
        "file": str(path), "format_version": reader.version, "bytes": len(data), "gaussians": n,
        "clusters": scene.n_clusters, "cluster_sizes": sizes, "sh_degree": scene.sh_degree,
        "position_bits": scene.position_bits, "weight_precision": scene.weight_precision,
        "mlp": {"activation": scene.field_activation, "layers": len(weight_coder.layer_sizes(scene.field_state)),
                "parameters_per_cluster": parameters},
        "bounding_box": {"min": scene.positions.min(dim=0).values.tolist(), "max": scene.positions.max(dim=0).values.tolist()},
        "sections": breakdown,
        "residual_columns": [] if scene.residual_columns is None else scene.residual_columns.tolist(),
        "bits_per_gaussian": {"positions": 8 * breakdown["positions"] / n, "mlp_weights": 8 * breakdown["mlp_weights"] / n,
                              "residuals": 8 * breakdown["residuals"] / n, "total": 8 * len(data) / n},
    }


def format_info(info: dict) -> str:
    """`read_info` as the table `neuralgs info` prints."""
    n, total = info["gaussians"], info["bytes"]
    lines = [f"{info['file']}: .ngs format {info['format_version']}, {total:,} bytes",
             f"{n:,} Gaussians in {info['clusters']} clusters (largest {info['cluster_sizes'][0]:,}, smallest "
             f"{info['cluster_sizes'][-1]:,}), SH degree {info['sh_degree']}",
             f"positions: {info['position_bits']}-bit grid; MLPs: {info['mlp']['layers']} layers, "
             f"{info['mlp']['parameters_per_cluster']:,} parameters each, {info['weight_precision']}, "
             f"{info['mlp']['activation']}",
             ]
    if info["residual_columns"]:
        lines.append(f"residuals: attribute columns {', '.join(map(str, info['residual_columns']))}")
    lines += ["", f"{'section':<22}{'bytes':>12}{'share':>8}{'bits/Gaussian':>15}"]
    for name, size in info["sections"].items():
        lines.append(f"{name:<22}{size:>12,}{size / total:>8.1%}{8 * size / n:>15.2f}")
    lines.append(f"{'total':<22}{total:>12,}{1:>8.0%}{8 * total / n:>15.2f}")
    return "\n".join(lines)


def info_json(info: dict) -> str:
    return json.dumps(info, indent=2)

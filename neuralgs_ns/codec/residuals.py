"""The residual coder: per-Gaussian integer codes of a few attribute columns, to bytes and back.

Where the MLPs leave an attribute too far from the teacher, the model can store a correction
per Gaussian: the attribute is the MLP's prediction plus `step * code` (in the normalised
[-1, 1] space of `clustering.NormalizationTable`), with an integer code per Gaussian and
column. The MLP is the predictor, so the codes cluster around 0 and entropy coding makes them
cheap; a larger step means fewer distinct codes and fewer bits.

Per file, `ResidualTable` holds for each coded column its attribute index, its step, and a
histogram of its codes (the ANS coder's categorical model, like the positions'
`ExponentModel`). Per cluster, `encode_cluster` writes one ANS stream of all columns.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import List, Sequence

import constriction
import numpy as np

_COLUMN = struct.Struct("<HfiH")  # attribute index, step, lowest code, alphabet size
MAX_ALPHABET = 4096
"""Codes of a column span at most this many values (the table's counts are u16 each)."""


@dataclass
class ResidualTable:
    """The coded columns and their code histograms: everything a reader needs besides the streams."""

    columns: np.ndarray  # [C] int, attribute indices (ascending)
    steps: np.ndarray  # [C] float32, step of each column in normalised units
    lows: np.ndarray  # [C] int, smallest code of each column
    counts: List[np.ndarray]  # per column, [alphabet] counts of codes lows[c], lows[c] + 1, ...

    @property
    def n_columns(self) -> int:
        return len(self.columns)

    @classmethod
    def fit(cls, codes: np.ndarray, columns: Sequence[int], steps: Sequence[float]) -> "ResidualTable":
        """From every Gaussian's codes [N, C] (all clusters), the columns and their steps."""
        codes = np.asarray(codes, dtype=np.int64).reshape(len(codes), len(columns))
        lows, counts = [], []
        for c in range(len(columns)):
            lo = int(codes[:, c].min()) if len(codes) else 0
            hi = int(codes[:, c].max()) if len(codes) else 0
            if hi - lo + 1 > MAX_ALPHABET:
                raise ValueError(f"residual codes of attribute {columns[c]} span {hi - lo + 1} values, "
                                 f"more than {MAX_ALPHABET}")
            hist = np.bincount(codes[:, c] - lo, minlength=hi - lo + 1).astype(np.float64)
            # u16 counts keep the proportions; every code that occurs keeps a nonzero count.
            scaled = np.where(hist > 0, np.maximum(1, np.round(hist * 65535 / max(hist.max(), 1))), 0)
            lows.append(lo)
            counts.append(scaled.astype(np.uint16))
        return cls(np.asarray(columns, dtype=np.int64), np.asarray(steps, dtype=np.float32),
                   np.asarray(lows, dtype=np.int64), counts)

    def to_bytes(self) -> bytes:
        parts = [struct.pack("<H", self.n_columns)]
        for c in range(self.n_columns):
            parts.append(_COLUMN.pack(int(self.columns[c]), float(self.steps[c]), int(self.lows[c]), len(self.counts[c])))
            parts.append(self.counts[c].astype("<u2").tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes, n_attributes: int) -> "ResidualTable":
        """Raises ValueError on a table that does not parse or names columns outside [0, n_attributes)."""
        if len(data) < 2:
            raise ValueError("residual table shorter than its header")
        (n,) = struct.unpack_from("<H", data)
        offset, columns, steps, lows, counts = 2, [], [], [], []
        for _ in range(n):
            if offset + _COLUMN.size > len(data):
                raise ValueError("residual table ends inside a column")
            column, step, lo, size = _COLUMN.unpack_from(data, offset)
            offset += _COLUMN.size
            if not 0 <= column < n_attributes or not np.isfinite(step) or step <= 0 or not 1 <= size <= MAX_ALPHABET:
                raise ValueError(f"invalid residual column (attribute {column}, step {step}, {size} codes)")
            if offset + 2 * size > len(data):
                raise ValueError("residual table ends inside a histogram")
            hist = np.frombuffer(data, dtype="<u2", count=size, offset=offset).astype(np.uint16)
            offset += 2 * size
            if hist.sum(dtype=np.int64) == 0:
                raise ValueError(f"empty histogram for residual attribute {column}")
            columns.append(column), steps.append(step), lows.append(lo), counts.append(hist)
        if offset != len(data) or len(set(columns)) != n:
            raise ValueError("residual table has trailing bytes or repeats a column")
        return cls(np.asarray(columns, dtype=np.int64), np.asarray(steps, dtype=np.float32),
                   np.asarray(lows, dtype=np.int64), counts)

    def categorical(self, c: int):
        # Writer and reader compute the same float64 probabilities from the stored integers.
        probabilities = self.counts[c].astype(np.float64) / float(self.counts[c].sum(dtype=np.float64))
        return constriction.stream.model.Categorical(probabilities, perfect=False)

    def ideal_bits(self, codes: np.ndarray) -> float:
        """-sum log2 p(code) of codes [n, C] under this table: what the streams cost, within
        a few bytes per cluster (the ANS words are 32 bits)."""
        codes = np.asarray(codes, dtype=np.int64).reshape(len(codes), self.n_columns)
        total = 0.0
        for c in range(self.n_columns):
            if len(self.counts[c]) > 1:
                p = self.counts[c].astype(np.float64) / float(self.counts[c].sum(dtype=np.float64))
                total -= float(np.log2(p[codes[:, c] - self.lows[c]]).sum())
        return total


def planned_bytes(codes: np.ndarray, table: ResidualTable, cluster_sizes: Sequence[int]) -> int:
    """Bytes of `table` and of one stream (`encode_cluster`) per cluster of codes [N, C], the
    clusters being consecutive runs of `cluster_sizes` rows: each stream priced at its ideal
    code length rounded up to whole ANS words, plus a word (at most one over per cluster)."""
    starts = np.concatenate([[0], np.cumsum(cluster_sizes)]).astype(np.int64)
    words = sum(int(np.ceil(table.ideal_bits(codes[starts[i] : starts[i + 1]]) / 32)) + 1
                for i in range(len(cluster_sizes)))
    return len(table.to_bytes()) + 4 * len(cluster_sizes) + 4 * words


def encode_cluster(codes: np.ndarray, table: ResidualTable) -> bytes:
    """One cluster's codes [n, C] -> u32 count of ANS words, then the words (little-endian u32).
    Columns are pushed last to first, so a reader pops them first to last."""
    codes = np.asarray(codes, dtype=np.int64).reshape(len(codes), table.n_columns)
    coder = constriction.stream.stack.AnsCoder()
    for c in reversed(range(table.n_columns)):
        symbols = codes[:, c] - table.lows[c]
        if len(symbols) and (symbols.min() < 0 or symbols.max() >= len(table.counts[c])):
            raise ValueError(f"residual codes of attribute {table.columns[c]} fall outside the table's range")
        if len(table.counts[c]) > 1:  # a column of one value costs nothing
            coder.encode_reverse(symbols.astype(np.int32), table.categorical(c))
    words = coder.get_compressed().astype("<u4")
    return struct.pack("<I", len(words)) + words.tobytes()


def decode_cluster(data: bytes, n: int, table: ResidualTable) -> np.ndarray:
    """Inverse of `encode_cluster`: codes [n, C] int64. Raises ValueError on data that does
    not decode to exactly that."""
    if len(data) < 4:
        raise ValueError("residual block shorter than its header")
    (n_words,) = struct.unpack_from("<I", data)
    if 4 + 4 * n_words != len(data):
        raise ValueError(f"residual block has {len(data)} bytes, its header says {4 + 4 * n_words}")
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(data, dtype="<u4", offset=4).astype(np.uint32))
    codes = np.empty((n, table.n_columns), dtype=np.int64)
    for c in range(table.n_columns):
        if len(table.counts[c]) > 1:
            codes[:, c] = np.asarray(coder.decode(table.categorical(c), n), dtype=np.int64) + table.lows[c]
        else:
            codes[:, c] = table.lows[c]
    if not coder.is_empty():
        raise ValueError("residual stream has data left over")
    return codes

"""The weight coder: one cluster's MLP to bytes and back.

Per layer, in order: the weights [in, out] and biases [out], little-endian:
  float16: weights float16, biases float16                      (2 bytes per parameter)
  int8:    weights int8, one float16 scale per output unit, biases float16
The int8 codes are nearly incompressible (measured on lego-200: 7.7 bits of entropy per
weight, zstandard saves 3%), so they are stored raw.

The reconstruction is `quantize.dequantize_int8_weights` / a float16 cast, the same formulas
the field evaluates while training, so decoded MLPs are the trained MLPs bit for bit.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from neuralgs_ns.codec.quantize import dequantize_int8_weights, int8_weight_codes, int8_weight_scales

WEIGHT_PRECISIONS = ("float16", "int8")  # index = the format's code


def stored_weights(weights: Tensor, precision: str) -> Tensor:
    """Float32 master weights [K, in, out] -> the values the file holds, as float32."""
    if precision == "float16":
        return weights.detach().half().float()
    scales = int8_weight_scales(weights)
    return dequantize_int8_weights(int8_weight_codes(weights, scales), scales)


def layer_sizes(state: Dict[str, Tensor]) -> List[Tuple[int, int]]:
    """(in, out) of each layer of a field state dict."""
    depth = sum(1 for name in state if name.startswith("weights."))
    return [tuple(state[f"weights.{layer}"].shape[1:]) for layer in range(depth)]


def cluster_bytes_expected(sizes: Sequence[Tuple[int, int]], precision: str) -> int:
    """Length of one cluster's block: checked before decoding, so a corrupt header cannot make
    the reader allocate more than the file holds."""
    per_layer = [n_in * n_out * (2 if precision == "float16" else 1) + 2 * n_out * (1 if precision == "float16" else 2)
                 for n_in, n_out in sizes]
    return sum(per_layer)


def encode_cluster(state: Dict[str, Tensor], k: int, precision: str) -> bytes:
    """Cluster k's MLP of a field state dict (any float weights: they are quantised here,
    exactly as the field's forward pass does)."""
    parts = []
    for layer in range(len(layer_sizes(state))):
        weights = state[f"weights.{layer}"][k : k + 1].detach().cpu().float()
        biases = state[f"biases.{layer}"][k].detach().cpu().float().reshape(-1)
        if precision == "float16":
            parts.append(weights[0].half().numpy().astype("<f2").tobytes())
        else:
            scales = int8_weight_scales(weights)
            parts.append(int8_weight_codes(weights, scales)[0].numpy().tobytes())
            parts.append(scales.reshape(-1).half().numpy().astype("<f2").tobytes())
        parts.append(biases.half().numpy().astype("<f2").tobytes())
    return b"".join(parts)


def decode_cluster(data: bytes, sizes: Sequence[Tuple[int, int]], precision: str) -> List[Tuple[Tensor, Tensor]]:
    """Inverse of `encode_cluster`: [(weights [in, out], biases [out])] float32 per layer."""
    if len(data) != cluster_bytes_expected(sizes, precision):
        raise ValueError(f"MLP block has {len(data)} bytes, expected {cluster_bytes_expected(sizes, precision)}")
    layers, offset = [], 0

    def take(count: int, dtype: str) -> Tensor:
        nonlocal offset
        array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
        offset += array.nbytes
        return torch.from_numpy(array.astype(np.float32 if dtype == "<f2" else np.int8))

    for n_in, n_out in sizes:
        if precision == "float16":
            weights = take(n_in * n_out, "<f2").reshape(n_in, n_out)
        else:
            codes = take(n_in * n_out, "i1").reshape(n_in, n_out)
            weights = dequantize_int8_weights(codes, take(n_out, "<f2").reshape(1, n_out))
        layers.append((weights, take(n_out, "<f2")))
    return layers

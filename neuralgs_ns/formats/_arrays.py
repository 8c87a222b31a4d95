"""numpy helpers the format modules share: every encoder and decoder works on whole arrays at
once, with no per-Gaussian Python."""

from __future__ import annotations

import numpy as np
import torch

from neuralgs_ns.gaussians import Gaussians


def numpy32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def sigmoid(x: np.ndarray) -> np.ndarray:
    # tanh form: no overflow warning for very negative logits, unlike 1 / (1 + exp(-x)).
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def logit(p: np.ndarray, eps: float) -> np.ndarray:
    """log(p / (1 - p)) of p clamped to [eps, 1 - eps], so a byte of 0 or 255 stays finite."""
    p = np.clip(p.astype(np.float64), eps, 1 - eps)
    return np.log(p / (1 - p))


def byte_opacity_logit(alpha: np.ndarray) -> np.ndarray:
    """Logit opacity of alpha bytes: byte / 255, except that 0 and 255 (the ends, half a step
    wide) decode to their inner edge, so that every byte decodes finite and within half a step."""
    return logit(alpha / 255.0, 0.5 / 255)


def to_u8(x: np.ndarray) -> np.ndarray:
    """Round to nearest and clamp to a byte."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def unit_wxyz(quats: np.ndarray) -> np.ndarray:
    """Unit quaternions; a zero quaternion (no rotation defined) becomes the identity."""
    norm = np.linalg.norm(quats, axis=1, keepdims=True)
    unit = quats / np.where(norm > 0, norm, 1)
    unit[norm[:, 0] == 0] = (1, 0, 0, 0)
    return unit


def gaussians_from_numpy(means, scales, quats, opacities, features_dc, features_rest) -> Gaussians:
    """A Gaussians record of float32 tensors from arrays in the record's layout, but for
    opacities [N] (not [N, 1])."""
    arrays = dict(means=means, scales=scales, quats=quats, opacities=np.reshape(opacities, (len(means), 1)),
                  features_dc=features_dc, features_rest=features_rest)
    return Gaussians(**{k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()})

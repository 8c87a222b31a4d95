"""Stage B: min-max normalised attribute table and k-means clustering on the attributes.

The attribute vector of a Gaussian, in this order (what the per-cluster MLPs predict):
logit opacity (1), log scales (3), unit quaternion with w >= 0 (4), SH DC (3), SH rest (3 (K-1)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from neuralgs_ns.gaussians import Gaussians


def attribute_matrix(gaussians: Gaussians) -> Tensor:
    """[N, D] attributes; quaternions normalised and sign-fixed (q and -q are one rotation)."""
    quats = torch.nn.functional.normalize(gaussians.quats, dim=-1)
    quats = torch.where(quats[:, :1] < 0, -quats, quats)
    return torch.cat([gaussians.opacities, gaussians.scales, quats, gaussians.features_dc,
                      gaussians.features_rest.flatten(1)], dim=-1)


ATTRIBUTE_GROUPS = ("opacity", "scales", "rotations", "dc", "sh_rest")


def attribute_count(sh_degree: int) -> int:
    """D, the length of `attribute_matrix`'s rows: opacity, scales, quaternion, DC, SH rest."""
    return 11 + 3 * ((sh_degree + 1) ** 2 - 1)


def attribute_groups(sh_degree: int) -> dict:
    """Columns (a slice) of each attribute group in `attribute_matrix`, by name; no sh_rest at
    SH degree 0."""
    groups = {"opacity": slice(0, 1), "scales": slice(1, 4), "rotations": slice(4, 8), "dc": slice(8, 11)}
    if sh_degree > 0:
        groups["sh_rest"] = slice(11, 11 + 3 * ((sh_degree + 1) ** 2 - 1))
    return groups


def gaussians_from_attributes(means: Tensor, attributes: Tensor, sh_degree: int) -> Gaussians:
    """Inverse of `attribute_matrix` (with the decoded positions)."""
    n = means.shape[0]
    k_rest = (sh_degree + 1) ** 2 - 1
    opac, scales, quats, dc, rest = torch.split(attributes, [1, 3, 4, 3, 3 * k_rest], dim=-1)
    return Gaussians(means=means, scales=scales, quats=quats, opacities=opac, features_dc=dc,
                     features_rest=rest.reshape(n, k_rest, 3))


@dataclass
class NormalizationTable:
    """Per-attribute min and max [D]; maps attributes to [-1, 1] and back (stored in the file)."""

    mins: Tensor
    maxs: Tensor

    @classmethod
    def fit(cls, attributes: Tensor) -> "NormalizationTable":
        return cls(attributes.min(dim=0).values, attributes.max(dim=0).values)

    @property
    def _half_range(self) -> Tensor:
        # Constant columns normalise to 0 instead of dividing by zero.
        return ((self.maxs - self.mins) / 2).clamp_min(1e-12)

    def normalize(self, attributes: Tensor) -> Tensor:
        return (attributes - self.mins) / self._half_range - 1.0

    def denormalize(self, normalized: Tensor) -> Tensor:
        return (normalized + 1.0) * self._half_range + self.mins


def cluster_count(n: int, target_cluster_size: int, n_clusters: Optional[int] = None, min_clusters: int = 1) -> int:
    """Explicit `n_clusters`, else about n / target_cluster_size, raised towards `min_clusters`
    for small scenes as long as clusters keep at least half the target size (at least 1)."""
    if n_clusters is not None:
        if n_clusters < 1:
            raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
        return min(n_clusters, n)
    by_size = int(round(n / target_cluster_size))
    small_scene_floor = min(min_clusters, n // max(1, target_cluster_size // 2))
    return max(1, by_size, small_scene_floor)


def kmeans_clusters(normalized: Tensor, n_clusters: int, seed: int = 0) -> Tensor:
    """Cluster labels [N] (int64) from k-means on normalised attributes, relabelled so that
    cluster 0 is the largest (the order the file stores and streams them). Deterministic
    for a given seed."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    x = normalized.detach().cpu().numpy().astype(np.float32)
    if n_clusters == 1:
        return torch.zeros(x.shape[0], dtype=torch.long)
    # Full k-means up to a few hundred thousand points; mini-batches beyond (1M+ scenes).
    if x.shape[0] <= 300_000:
        km = KMeans(n_clusters=n_clusters, n_init=1, random_state=seed, max_iter=100)
    else:
        km = MiniBatchKMeans(n_clusters=n_clusters, n_init=1, random_state=seed, batch_size=8192)
    labels = km.fit_predict(x)
    sizes = np.bincount(labels, minlength=n_clusters)
    order = np.argsort(-sizes, kind="stable")  # largest first
    rank = np.empty_like(order)
    rank[order] = np.arange(n_clusters)
    return torch.from_numpy(rank[labels]).long()

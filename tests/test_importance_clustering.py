"""Stages A (importance, pruning) and B (normalisation, k-means) on tiny scenes."""

import torch

from neuralgs_ns.compress.clustering import (NormalizationTable, attribute_matrix, cluster_count,
                                             gaussians_from_attributes, kmeans_clusters)
from neuralgs_ns.compress.importance import blending_weights, importance_scores, prune_mask, volume_factor
from neuralgs_ns.gaussians import Gaussians
from neuralgs_ns.render import rasterize
from neuralgs_ns.utils import look_at_viewmats

K = torch.tensor([[80.0, 0, 32], [0, 80.0, 32], [0, 0, 1]])


def scene(means, scales, logit_opacity):
    n = len(means)
    return Gaussians(torch.tensor(means), torch.tensor(scales).log(), torch.tensor([[1.0, 0, 0, 0]] * n),
                     torch.tensor(logit_opacity)[:, None], torch.zeros(n, 3), torch.zeros(n, 0, 3))


def test_hidden_gaussian_ranks_below_visible_one():
    # Camera on the +z axis looking down; Gaussian 1 sits right behind the large opaque Gaussian 0,
    # Gaussian 2 is the same size as 1 but off to the side, in plain view.
    g = scene([[0, 0, 0], [0, 0, -0.6], [0.7, 0.7, -0.6]], [[0.4] * 3, [0.08] * 3, [0.08] * 3], [9.0, 2.0, 2.0])
    views = [(vm, K, 64, 64) for vm in look_at_viewmats(3, radius=3.0, elevation_deg=85.0)]
    s = importance_scores(g, views, beta=0.1)
    assert s[1] < 0.05 * s[2]
    assert torch.equal(prune_mask(s, 1 / 3), torch.tensor([True, False, True]))


def test_blending_weights_sum_to_rendered_alpha():
    """sum_j sum_p alpha_j T_j = sum_p (1 - T_final): an identity independent of the gradient trick."""
    gen = torch.Generator().manual_seed(0)
    n = 60
    g = Gaussians(torch.randn(n, 3, generator=gen) * 0.4, torch.randn(n, 3, generator=gen) * 0.3 - 2.5,
                  torch.randn(n, 4, generator=gen), torch.randn(n, 1, generator=gen), torch.zeros(n, 3), torch.zeros(n, 0, 3))
    vm = look_at_viewmats(1, radius=3.0, elevation_deg=20.0)[0]
    w = blending_weights(g, vm, K, 64, 64)
    _, alphas, _ = g.render(vm[None], K[None], 64, 64)
    assert (w >= 0).all()
    assert torch.allclose(w.sum(), alphas.sum(), rtol=1e-4)


def test_volume_factor_clamps_large_gaussians_to_one():
    g = scene([[0, 0, 0]] * 10, [[0.01 * (i + 1)] * 3 for i in range(10)], [0.0] * 10)
    f = volume_factor(g, beta=1.0, quantile=0.9)
    assert torch.all(f[-1:] == 1.0) and torch.all(f[:-2] < 1.0)
    assert torch.all(f[1:] >= f[:-1])


def test_prune_fraction_is_exact_with_ties():
    keep = prune_mask(torch.zeros(10), 0.4)
    assert int(keep.sum()) == 6


def test_normalization_round_trip_and_range():
    gen = torch.Generator().manual_seed(1)
    n = 500
    g = Gaussians(torch.randn(n, 3, generator=gen), torch.randn(n, 3, generator=gen), torch.randn(n, 4, generator=gen),
                  torch.randn(n, 1, generator=gen), torch.randn(n, 3, generator=gen), torch.randn(n, 8, 3, generator=gen))
    attrs = attribute_matrix(g)
    assert attrs.shape == (n, 1 + 3 + 4 + 3 + 24)
    table = NormalizationTable.fit(attrs)
    normed = table.normalize(attrs)
    assert normed.min() == -1.0 and normed.max() == 1.0
    back = gaussians_from_attributes(g.means, table.denormalize(normed), sh_degree=2)
    assert torch.allclose(back.features_rest, g.features_rest, atol=1e-5)
    # Quaternions come back normalised with w >= 0: the same rotation.
    q = torch.nn.functional.normalize(g.quats, dim=-1)
    assert torch.allclose((back.quats * q).sum(-1).abs(), torch.ones(n), atol=1e-5)
    # A constant column does not divide by zero.
    attrs[:, 0] = 3.0
    assert torch.isfinite(NormalizationTable.fit(attrs).normalize(attrs)).all()


def test_kmeans_is_deterministic_and_orders_largest_first():
    gen = torch.Generator().manual_seed(2)
    blobs = torch.cat([torch.randn(n, 5, generator=gen) * 0.1 + c for n, c in ((50, -2.0), (300, 0.0), (150, 2.0))])
    a = kmeans_clusters(blobs, 3, seed=7)
    b = kmeans_clusters(blobs, 3, seed=7)
    assert torch.equal(a, b)
    assert torch.bincount(a).tolist() == [300, 150, 50]
    assert cluster_count(100_000, 20_000) == 5 and cluster_count(10, 20_000) == 1 and cluster_count(10, 20_000, 30) == 10


def test_small_scenes_get_more_clusters_but_not_below_half_the_target_size():
    assert cluster_count(118_000, 5000, min_clusters=12) == 24  # big scene: by size
    assert cluster_count(30_000, 5000, min_clusters=12) == 12  # small: raised to the minimum
    assert cluster_count(17_000, 5000, min_clusters=12) == 6  # smaller: clusters stay >= 2500
    assert cluster_count(300, 5000, min_clusters=12) == 1
    assert cluster_count(30_000, 5000, n_clusters=3, min_clusters=12) == 3  # explicit wins


def test_rasterize_used_by_importance_is_the_public_one():
    """Guard: blending weights come from `rasterize`, so they follow its culling (behind camera => 0)."""
    g = scene([[0, 0, 5.0]], [[0.1] * 3], [5.0])  # above the camera at z=3 looking down: behind it
    vm = look_at_viewmats(1, radius=3.0, elevation_deg=89.9)[0]
    assert blending_weights(g, vm, K, 64, 64).item() == 0.0
    _, _, info = rasterize(g.means, g.quats, g.activated_scales, g.activated_opacities, torch.ones(1, 3), vm[None], K[None], 64, 64)
    assert int(info["radii"].sum()) == 0

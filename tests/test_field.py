"""Stage C: the clustered MLP field (`neuralgs_ns.compress.field`).

Fits use a small field (4 frequencies, width 32, 3 layers) on ~2k points per cluster so the
file runs in seconds; the paper-sized field is the same code with bigger matrices.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from neuralgs_ns.compress.field import (
    ClusteredMLPField,
    HIDDEN_WIDTH_ALIGN,
    FieldConfig,
    _importance_sampler,
    cluster_bounds,
    fast_tanh,
    fit_field,
    positional_encoding,
    weighted_mse,
)

SMALL = FieldConfig(n_frequencies=4, width=32, depth=3)
D = 14  # attributes at SH degree 0


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These are tiny matrix products: on a shared 2-core machine thread hand-offs cost more
    # than they save (about 2.5x slower with 2 threads under load).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def smooth_scene(n: int, k: int, points_seed: int):
    """n points in k unit-ish boxes around fixed centres; targets a smooth function of position
    in [-1, 1] (fixed by seed 0 whatever `points_seed`, so two calls give train/held-out sets)."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(k, 3, generator=g) * 3
    freqs = torch.randn(3, D, generator=g) * 1.5
    phases = torch.rand(D, generator=g) * 2 * math.pi
    g = torch.Generator().manual_seed(points_seed)
    labels = torch.randint(0, k, (n,), generator=g)
    positions = centers[labels] + torch.rand(n, 3, generator=g) * 2 - 1
    targets = 0.8 * torch.sin(positions @ freqs + phases)
    return positions, labels, targets


def randomized(field: ClusteredMLPField, seed: int = 1) -> ClusteredMLPField:
    """The field with O(1) random weights, so decode comparisons see non-trivial outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in field.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-2]))
    return field


def reference_decode(field: ClusteredMLPField, positions, labels):
    """Each cluster alone, written independently of the module: per-cluster loop, F.linear."""
    cfg = field.config
    act = {"tanh": torch.tanh, "relu": torch.relu, "silu": torch.nn.functional.silu}[cfg.activation]
    out = torch.zeros(positions.shape[0], field.out_dim)
    for k in range(field.n_clusters):
        mask = labels == k
        lo, hi = field.bounds_min[k], field.bounds_max[k]
        x = (positions[mask] - (lo + hi) / 2) / ((hi - lo) / 2).clamp_min(1e-6)
        feats = [x]
        feats += [torch.sin(2**f * math.pi * x) for f in range(cfg.n_frequencies)]
        feats += [torch.cos(2**f * math.pi * x) for f in range(cfg.n_frequencies)]
        h = torch.cat(feats, dim=-1)
        for layer in range(cfg.depth):
            w, b = field.weights[layer][k], field.biases[layer][k, 0]
            if cfg.weight_precision == "float16":  # what the file stores
                w, b = w.half().float(), b.half().float()
            h = torch.nn.functional.linear(h, w.T, b)
            if layer < cfg.depth - 1:
                h = act(h)
        out[mask] = h
    return out


def test_positional_encoding_layout():
    x = torch.rand(5, 3) * 2 - 1
    enc = positional_encoding(x, 3)
    assert enc.shape == (5, 21)
    torch.testing.assert_close(enc[:, :3], x)
    torch.testing.assert_close(enc[:, 3 + 2 * 3:3 + 3 * 3], torch.sin(4 * math.pi * x))
    torch.testing.assert_close(enc[:, 12 + 0:12 + 3], torch.cos(math.pi * x))


def test_cluster_bounds_and_parameter_layout():
    positions, labels, _ = smooth_scene(500, 3, points_seed=1)
    field = ClusteredMLPField.from_points(SMALL, positions, labels, D, n_clusters=4)
    for k in range(3):
        torch.testing.assert_close(field.bounds_min[k], positions[labels == k].min(0).values)
        torch.testing.assert_close(field.bounds_max[k], positions[labels == k].max(0).values)
    assert field.bounds_min[3].abs().sum() == 0  # empty cluster
    sizes = [3 + 6 * 4, 32, 32, D]
    assert [tuple(w.shape) for w in field.weights] == [(4, i, o) for i, o in zip(sizes[:-1], sizes[1:])]
    assert [tuple(b.shape) for b in field.biases] == [(4, 1, o) for o in sizes[1:]]
    assert field.n_parameters() == 4 * sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:]))
    # Initial output sits near the middle of the normalised range.
    assert field.decode(positions, labels).abs().max() < 0.2


def test_fit_reproduces_smooth_field_and_generalises():
    positions, labels, targets = smooth_scene(6000, 3, points_seed=1)
    field = ClusteredMLPField.from_points(SMALL, positions, labels, D)
    losses = fit_field(field, positions, labels, targets, None, iterations=300, lr=2e-2, lr_final=2e-4,
                       batch_per_cluster=512, seed=0)
    variance = targets.var().item()
    train = weighted_mse(field, positions, labels, targets)
    held_pos, held_labels, held_targets = smooth_scene(3000, 3, points_seed=2)
    held = weighted_mse(field, held_pos, held_labels, held_targets)
    assert len(losses) == 300
    assert sum(losses[-20:]) / 20 < 0.1 * sum(losses[:5]) / 5
    # A constant prediction scores ~1 x variance; this fit reaches ~0.03 on both sets.
    assert train.max() < 0.08 * variance, (train, variance)
    assert held.max() < 0.08 * variance, (held, variance)


def test_decode_matches_each_cluster_alone():
    g = torch.Generator().manual_seed(3)
    n = 3000
    # Unequal clusters and an empty one (index 2), so blocks drop finished clusters.
    labels = torch.multinomial(torch.tensor([0.6, 0.3, 0.0, 0.1]), n, replacement=True, generator=g)
    positions = torch.randn(n, 3, generator=g) * 2
    field = randomized(ClusteredMLPField.from_points(SMALL, positions, labels, D, n_clusters=4))
    expected = reference_decode(field, positions, labels)
    with torch.no_grad():
        for chunk in (97, 1000, 1 << 17, None):
            got = field.decode(positions, labels, chunk=chunk)
            # Batched GEMM may round differently from per-cluster products: compare to 1e-6.
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert expected.abs().mean() > 0.1  # the comparison is not between near-zero outputs


def test_float16_weights_are_what_decodes():
    # The float16 field evaluates the float16 rounding of its weights (what the file stores):
    # the same outputs as a float32 field holding the rounded weights, unlike the raw ones.
    positions, labels, _ = smooth_scene(500, 2, points_seed=4)
    half = randomized(ClusteredMLPField.from_points(SMALL, positions, labels, D))
    full = ClusteredMLPField.from_points(dataclasses.replace(SMALL, weight_precision="float32"), positions, labels, D)
    full.load_state_dict(half.state_dict())
    with torch.no_grad():
        raw = full.decode(positions, labels)
        for p in full.parameters():
            p.copy_(p.half().float())
        assert torch.equal(half.decode(positions, labels), full.decode(positions, labels))
        assert not torch.equal(half.decode(positions, labels), raw)


def test_int8_weights_are_what_decodes_once_active():
    # Reference: per output unit, scale = float16(max |w| / 127), weights round(w / scale) * scale;
    # biases float16. Before int8 is active the field evaluates float16, like a float16 field.
    positions, labels, _ = smooth_scene(500, 2, points_seed=5)
    int8 = randomized(ClusteredMLPField.from_points(dataclasses.replace(SMALL, weight_precision="int8"),
                                                    positions, labels, D))
    full = ClusteredMLPField.from_points(dataclasses.replace(SMALL, weight_precision="float32"), positions, labels, D)
    with torch.no_grad():
        int8.int8_active = False
        full.load_state_dict({k: v if k.startswith("bounds") else v.half().float()
                              for k, v in int8.state_dict().items()})
        assert torch.equal(int8.decode(positions, labels), full.decode(positions, labels))
        int8.int8_active = True
        reference = {}
        for name, value in int8.state_dict().items():
            if name.startswith("weights."):
                scale = (value.abs().amax(dim=1, keepdim=True) / 127).half().float()
                value = torch.round(value / scale) * scale
            elif name.startswith("biases."):
                value = value.half().float()
            reference[name] = value
        full.load_state_dict(reference)
        assert torch.equal(int8.decode(positions, labels), full.decode(positions, labels))


@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_a_width_off_the_alignment_decodes_and_trains_as_if_unpadded(precision):
    """Hidden layers run zero-padded to HIDDEN_WIDTH_ALIGN units: outputs and every gradient
    must be those of the stored width, checked against the per-cluster reference (given the
    float16-rounded weights, since rounding passes gradients straight through)."""
    width = 13
    assert width % HIDDEN_WIDTH_ALIGN
    config = dataclasses.replace(SMALL, width=width, depth=4, weight_precision=precision)
    positions, labels, _ = smooth_scene(1500, 3, points_seed=1)
    field = randomized(ClusteredMLPField.from_points(config, positions, labels, D))
    assert [tuple(w.shape[1:]) for w in field.weights] == [(27, 13), (13, 13), (13, 13), (13, D)]
    reference = ClusteredMLPField.from_points(dataclasses.replace(config, weight_precision="float32"), positions,
                                              labels, D)
    with torch.no_grad():
        for mine, theirs in zip(field.parameters(), reference.parameters()):
            theirs.copy_(mine.half().float() if precision == "float16" else mine)
    upstream = torch.randn(len(positions), D, generator=torch.Generator().manual_seed(0))
    results = []
    for module, decode in ((field, lambda: field.decode(positions, labels)),
                           (reference, lambda: reference_decode(reference, positions, labels))):
        out = decode()
        (out * upstream).sum().backward()
        results.append((out.detach(), [p.grad for p in module.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], atol=5e-6, rtol=0)  # float32 rounding, 4 layers
    for got, expected in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert results[1][0].abs().mean() > 0.1


def test_decode_is_differentiable_in_weights():
    positions, labels, targets = smooth_scene(400, 2, points_seed=1)
    field = ClusteredMLPField.from_points(SMALL, positions, labels, D)
    (field.decode(positions, labels, chunk=64) - targets).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in field.parameters())


@pytest.mark.parametrize("importance_sampling", [True, False])
def test_importance_weighting_matters(importance_sampling):
    # Every position appears twice: with weight 1 and target f, and with weight ~0 and target -f.
    positions, labels, targets = smooth_scene(2000, 2, points_seed=1)
    positions, labels = positions.repeat(2, 1), labels.repeat(2)
    conflicting = torch.cat([targets, -targets])
    weights = torch.cat([torch.ones(2000), torch.full((2000,), 1e-6)])

    def error_to_high_weight_targets(w):
        field = ClusteredMLPField.from_points(SMALL, positions, labels, D)
        fit_field(field, positions, labels, conflicting, w, iterations=250, lr=2e-2, lr_final=2e-4,
                  batch_per_cluster=256, importance_sampling=importance_sampling, seed=0)
        return weighted_mse(field, positions[:2000], labels[:2000], targets).mean()

    weighted, unweighted = error_to_high_weight_targets(weights), error_to_high_weight_targets(None)
    # Unweighted, the fit averages f and -f to ~0: its error is ~ the variance of f.
    assert unweighted > 0.5 * targets.square().mean()
    assert weighted < 0.1 * unweighted, (weighted, unweighted)


def test_importance_sampler_draws_proportionally_and_skips_zero_weights():
    labels = torch.tensor([1, 0, 1, 0, 1, 2, 2])
    weights = torch.tensor([1.0, 2.0, 0.0, 6.0, 3.0, 0.0, 0.0])
    sample = _importance_sampler(labels, weights, n_clusters=4, importance_sampling=True)
    idx, factor = sample(torch.Generator().manual_seed(0), 20000)
    assert factor is None
    counts = torch.bincount(idx[:3].flatten(), minlength=7).float() / 20000  # row 3: empty cluster
    assert (labels[idx[:3]] == torch.arange(3)[:, None]).all()  # every draw from its own cluster
    assert counts[2] == 0  # zero weight: never drawn
    torch.testing.assert_close(counts[[1, 3]], torch.tensor([0.25, 0.75]), atol=0.02, rtol=0)
    torch.testing.assert_close(counts[[0, 4]], torch.tensor([0.25, 0.75]), atol=0.02, rtol=0)
    # A cluster with no importance at all is drawn uniformly.
    torch.testing.assert_close(counts[[5, 6]], torch.tensor([0.5, 0.5]), atol=0.02, rtol=0)

    uniform = _importance_sampler(labels, weights, n_clusters=4, importance_sampling=False)
    idx, factor = uniform(torch.Generator().manual_seed(0), 20000)
    # factor = S_j / (cluster mean of S): its mean over a cluster's draws is ~1 (unbiased).
    assert factor[:3].mean(dim=1).sub(1).abs().max() < 0.05
    torch.testing.assert_close(factor[0][idx[0] == 3], torch.full_like(factor[0][idx[0] == 3], 1.5))


def test_fit_is_one_batched_computation_and_deterministic():
    positions, labels, targets = smooth_scene(900, 3, points_seed=1)
    # Last cluster empty: fitting must leave it untouched and never index past the data.
    field = ClusteredMLPField.from_points(SMALL, positions, labels, D, n_clusters=4)
    calls = []
    forward_grouped = field.forward_grouped
    field.forward_grouped = lambda x: calls.append(tuple(x.shape)) or forward_grouped(x)
    before = [p.detach().clone() for p in field.parameters()]
    fit_field(field, positions, labels, targets, torch.rand(900), iterations=5, batch_per_cluster=64, seed=3)
    assert calls == [(4, 64, 3)] * 5  # one batched forward per step, all clusters in it
    assert all(torch.equal(b[3], p[3]) for b, p in zip(before, field.parameters()))
    assert not torch.equal(before[0][0], field.weights[0][0])

    def run(seed):
        f = ClusteredMLPField.from_points(SMALL, positions, labels, D, seed=5)
        return fit_field(f, positions, labels, targets, torch.rand(900, generator=torch.Generator().manual_seed(0)),
                         iterations=5, batch_per_cluster=64, seed=seed), f

    (l1, f1), (l2, f2), (l3, _) = run(3), run(3), run(4)
    assert l1 == l2 and all(torch.equal(a, b) for a, b in zip(f1.parameters(), f2.parameters()))
    assert l1 != l3


def test_state_dict_round_trip_reproduces_decode():
    positions, labels, targets = smooth_scene(800, 3, points_seed=1)
    field = randomized(ClusteredMLPField.from_points(SMALL, positions, labels, D))
    state = field.state_dict()
    assert {"bounds_min", "bounds_max"} <= set(state)
    with torch.no_grad():
        expected = field.decode(positions, labels)
        rebuilt = ClusteredMLPField.from_state_dict(SMALL, state)
        assert torch.equal(rebuilt.decode(positions, labels), expected)
        fresh = SMALL.setup(n_clusters=3, out_dim=D, cluster_bounds_min=torch.zeros(3, 3),
                            cluster_bounds_max=torch.ones(3, 3), seed=9)
        fresh.load_state_dict(state)
        assert torch.equal(fresh.decode(positions, labels), expected)
    with pytest.raises(RuntimeError):  # width mismatch
        ClusteredMLPField.from_state_dict(FieldConfig(n_frequencies=4, width=16, depth=3), state)
    with pytest.raises(ValueError):  # depth mismatch
        ClusteredMLPField.from_state_dict(FieldConfig(n_frequencies=4, width=32, depth=4), state)


def test_cluster_bounds_rejects_bad_labels():
    with pytest.raises(ValueError):
        cluster_bounds(torch.zeros(2, 3), torch.tensor([0, 5]), n_clusters=3)


def test_fast_tanh_matches_tanh_and_its_gradient():
    x = torch.linspace(-12, 12, 2001, dtype=torch.float64)
    torch.testing.assert_close(fast_tanh(x.float()).double(), torch.tanh(x), atol=3e-7, rtol=0)
    leaf = torch.randn(64, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fast_tanh, (leaf,))
    (grad,) = torch.autograd.grad(fast_tanh(leaf).sum(), leaf)
    torch.testing.assert_close(grad, 1 - torch.tanh(leaf.detach()) ** 2)

"""Stage C: one tiny MLP per cluster, mapping a Gaussian's position to its normalised attributes.

All K MLPs live in K-batched parameters (weights [K, in, out], biases [K, 1, out]) and run
together through `torch.baddbmm`, so a fitting step or a decode is `depth` batched matrix
products whatever K is, never a Python loop over clusters.

Input of cluster k's MLP: the position mapped to [-1, 1]^3 by cluster k's axis-aligned
bounding box (stored as buffers: the decoder needs them), then the positional encoding
    gamma(x) = [x, sin(2^f pi x), cos(2^f pi x) for f < n_frequencies]      (3 + 6 F values)
Output: the D attributes in the [-1, 1] space of `clustering.NormalizationTable`, in the
order of `clustering.attribute_matrix` (linear last layer).

Fitting (`fit_field`) minimises the importance-weighted MSE of NEURALGS.md, Eq. 3, with Adam.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, List, Literal, Mapping, Optional, Tuple, Type

import torch
from nerfstudio.configs.base_config import InstantiateConfig
from torch import Tensor, nn

from neuralgs_ns.codec.quantize import round_to_float16, round_to_int8


class _SigmoidTanh(torch.autograd.Function):
    """tanh(x) computed as 2 sigmoid(2x) - 1 (equal to float32 rounding), because on CPU
    torch's tanh kernel is several times slower than its sigmoid and the hidden activations are
    a large share of a stage D step (benchmarks/bench_field.py). The backward is tanh's own,
    1 - y^2."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = torch.sigmoid(2 * x).mul_(2).sub_(1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def fast_tanh(x: Tensor) -> Tensor:
    """tanh, through `_SigmoidTanh` on CPU (torch's own kernel elsewhere)."""
    return torch.tanh(x) if x.is_cuda else _SigmoidTanh.apply(x)


_ACTIVATIONS = {"tanh": fast_tanh, "relu": torch.relu, "silu": nn.functional.silu}
HIDDEN_WIDTH_ALIGN = 8
"""Hidden layers are evaluated zero-padded to a multiple of this many units: CPU GEMMs on
such widths run faster (benchmarks/bench_field.py: 4 x 63 MLPs on 17k points took 40 ms a
decode and backward, padded to 64 about 32). Exact: a padded unit's outgoing weights are zero,
so it adds nothing to the next layer and no gradient reaches the padding."""


@dataclasses.dataclass
class FieldConfig(InstantiateConfig):
    """The per-cluster MLPs of stage C (paper: 10 frequencies, 5 layers of width 128, tanh).

    `config.setup(n_clusters=..., out_dim=..., cluster_bounds_min=..., cluster_bounds_max=...)`
    builds a `ClusteredMLPField`."""

    _target: Type = dataclasses.field(default_factory=lambda: ClusteredMLPField)
    n_frequencies: int = 10
    """Octaves of the positional encoding of each cluster's box-normalised position
    (sin and cos of 2^f pi x for f < n_frequencies). More resolves finer detail; paper: 10."""
    width: int = 128
    """Hidden units per layer of each cluster's MLP. Parameters grow as width^2; paper: 128."""
    depth: int = 5
    """Number of linear layers of each cluster's MLP (depth - 1 hidden layers); paper: 5."""
    activation: Literal["tanh", "relu", "silu"] = "tanh"
    """Hidden-layer nonlinearity; paper: tanh."""
    weight_precision: Literal["int8", "float16", "float32"] = "float16"
    """Precision the weights are stored in. float16: the MLPs always evaluate the float16
    rounding of their float32 master weights, so training sees exactly what the file holds.
    int8: weights as int8 with a float16 scale per output unit (biases float16), the same way."""


def cluster_bounds(positions: Tensor, labels: Tensor, n_clusters: int) -> Tuple[Tensor, Tensor]:
    """Per-cluster axis-aligned bounding box of `positions` [N, 3] grouped by `labels` [N]:
    (mins [K, 3], maxs [K, 3]). An empty cluster gets the box [0, 0]^3."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_clusters):
        raise ValueError(f"labels must lie in [0, {n_clusters}), got [{int(labels.min())}, {int(labels.max())}]")
    index = labels[:, None].expand(-1, 3)
    zeros = positions.new_zeros(n_clusters, 3)
    mins = zeros.scatter_reduce(0, index, positions, reduce="amin", include_self=False)
    maxs = zeros.scatter_reduce(0, index, positions, reduce="amax", include_self=False)
    return mins, maxs


def positional_encoding(x: Tensor, n_frequencies: int) -> Tensor:
    """gamma(x) [..., 3 + 6 F] of box-normalised positions x [..., 3]: x, then sin and cos of
    2^f pi x for f = 0 .. F-1 (all sines first, then all cosines)."""
    if n_frequencies == 0:
        return x
    freqs = math.pi * 2.0 ** torch.arange(n_frequencies, device=x.device, dtype=x.dtype)
    angles = (x[..., None, :] * freqs[:, None]).flatten(-2)  # [..., F * 3]
    return torch.cat([x, torch.sin(angles), torch.cos(angles)], dim=-1)


class ClusteredMLPField(nn.Module):
    """K independent MLPs (one per cluster), evaluated as one batched computation.

    State (all in `state_dict`, which is what the file stores):
      weights.{l} [K, in_l, out_l], biases.{l} [K, 1, out_l] for the `depth` layers;
      bounds_min, bounds_max [K, 3]: each cluster's box in world units.
    """

    def __init__(self, config: FieldConfig, n_clusters: int, out_dim: int, cluster_bounds_min: Tensor,
                 cluster_bounds_max: Tensor, seed: int = 0):
        """config: layer sizes and activation; out_dim: D attributes; cluster_bounds_min/max
        [K, 3]: box of each cluster (see `cluster_bounds`); seed: of the initialisation
        (drawn from its own generator, so the global RNG is untouched)."""
        super().__init__()
        if config.depth < 1 or config.width < 1 or config.n_frequencies < 0:
            raise ValueError(f"invalid field config: depth={config.depth}, width={config.width}, "
                             f"n_frequencies={config.n_frequencies}")
        if tuple(cluster_bounds_min.shape) != (n_clusters, 3) or tuple(cluster_bounds_max.shape) != (n_clusters, 3):
            raise ValueError(f"cluster bounds must be [{n_clusters}, 3], got {tuple(cluster_bounds_min.shape)} "
                             f"and {tuple(cluster_bounds_max.shape)}")
        self.config = config
        self.n_clusters = n_clusters
        self.out_dim = out_dim
        self._activation = _ACTIVATIONS[config.activation]
        self.register_buffer("bounds_min", cluster_bounds_min.detach().float().clone())
        self.register_buffer("bounds_max", cluster_bounds_max.detach().float().clone())

        sizes = [3 + 6 * config.n_frequencies] + [config.width] * (config.depth - 1) + [out_dim]
        gen = torch.Generator().manual_seed(seed)
        gain = nn.init.calculate_gain(config.activation if config.activation != "silu" else "relu")
        weights, biases = [], []
        for layer, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            # Glorot uniform scaled by the activation's gain keeps hidden pre-activations O(1);
            # the last layer starts 100x smaller so the initial output is ~0, the centre of
            # the normalised attribute range, instead of random values the fit must undo.
            bound = gain * math.sqrt(6.0 / (n_in + n_out))
            if layer == len(sizes) - 2:
                bound = 0.01 * math.sqrt(6.0 / (n_in + n_out))
            w = (torch.rand(n_clusters, n_in, n_out, generator=gen) * 2 - 1) * bound
            weights.append(nn.Parameter(w.to(self.bounds_min.device)))
            biases.append(nn.Parameter(self.bounds_min.new_zeros(n_clusters, 1, n_out)))
        self.weights = nn.ParameterList(weights)
        self.biases = nn.ParameterList(biases)
        # With int8 weights: False evaluates their float16 rounding instead, for the training
        # phases before quantisation-aware fine-tuning (see NeuralGSModelConfig.int8_fraction).
        self.int8_active = True

    @classmethod
    def from_points(cls, config: FieldConfig, positions: Tensor, labels: Tensor, out_dim: int,
                    n_clusters: Optional[int] = None, seed: int = 0) -> "ClusteredMLPField":
        """A fresh field whose boxes bound `positions` [N, 3] of each cluster of `labels` [N].
        n_clusters defaults to labels.max() + 1. Build it from the positions the decoder will
        see (after any position quantisation), so decoded points fall inside their boxes."""
        if n_clusters is None:
            n_clusters = int(labels.max()) + 1
        mins, maxs = cluster_bounds(positions.detach().float(), labels, n_clusters)
        return cls(config, n_clusters, out_dim, mins, maxs, seed=seed)

    @classmethod
    def from_state_dict(cls, config: FieldConfig, state_dict: Mapping[str, Tensor]) -> "ClusteredMLPField":
        """Rebuilds a field from `state_dict()` output: K, D and the boxes come from the tensors,
        layer sizes are checked against `config`."""
        depth = sum(1 for name in state_dict if name.startswith("weights."))
        if depth != config.depth:
            raise ValueError(f"state dict has {depth} layers, config.depth is {config.depth}")
        last = state_dict[f"weights.{depth - 1}"]
        field = cls(config, last.shape[0], last.shape[-1], state_dict["bounds_min"], state_dict["bounds_max"])
        field.load_state_dict(state_dict)  # strict: any width/frequency mismatch raises here
        return field

    def n_parameters(self) -> int:
        """Number of MLP weights and biases over all clusters (the K x 6 box floats excluded)."""
        return sum(p.numel() for p in self.parameters())

    def _forward(self, x: Tensor, clusters: Optional[Tensor] = None) -> Tensor:
        """x [k, M, 3] world positions of clusters `clusters` [k] (all K in order if None)
        -> [k, M, D] normalised attributes."""
        if clusters is None:
            lo, hi, weights, biases = self.bounds_min, self.bounds_max, list(self.weights), list(self.biases)
        else:
            lo, hi = self.bounds_min[clusters], self.bounds_max[clusters]
            weights = [w[clusters] for w in self.weights]
            biases = [b[clusters] for b in self.biases]
        precision = "float16" if self.config.weight_precision == "int8" and not self.int8_active else \
            self.config.weight_precision
        if precision == "float16":
            weights, biases = [round_to_float16(w) for w in weights], [round_to_float16(b) for b in biases]
        elif precision == "int8":
            weights, biases = [round_to_int8(w) for w in weights], [round_to_float16(b) for b in biases]
        pad = -self.config.width % HIDDEN_WIDTH_ALIGN
        if pad and len(weights) > 1:
            last = len(weights) - 1
            weights = [nn.functional.pad(w, (0, pad if layer < last else 0, 0, pad if layer > 0 else 0))
                       for layer, w in enumerate(weights)]
            biases = [nn.functional.pad(b, (0, pad)) if layer < last else b for layer, b in enumerate(biases)]
        center = ((lo + hi) / 2)[:, None]
        # Flat boxes (one point, or a planar cluster) would divide by zero; points outside a
        # box (position quantisation drift) are clamped to its faces rather than extrapolated.
        half = ((hi - lo) / 2).clamp_min(1e-6)[:, None]
        h = positional_encoding(((x - center) / half).clamp(-1.0, 1.0), self.config.n_frequencies)
        for layer, (w, b) in enumerate(zip(weights, biases)):
            h = torch.baddbmm(b, h, w)
            if layer < len(weights) - 1:
                h = self._activation(h)
        return h

    def forward_grouped(self, x: Tensor) -> Tensor:
        """x [K, M, 3]: M world positions per cluster, row k belonging to cluster k
        -> [K, M, D] normalised attributes (used by mini-batch fitting)."""
        if x.dim() != 3 or x.shape[0] != self.n_clusters or x.shape[-1] != 3:
            raise ValueError(f"forward_grouped expects [{self.n_clusters}, M, 3], got {tuple(x.shape)}")
        return self._forward(x)

    def forward(self, positions: Tensor, labels: Tensor) -> Tensor:
        """Same as `decode` with its default block size."""
        return self.decode(positions, labels)

    def decode(self, positions: Tensor, labels: Tensor, chunk: Optional[int] = None) -> Tensor:
        """Every Gaussian through its own cluster's MLP: positions [N, 3] (world), labels [N]
        -> [N, D] normalised attributes. Differentiable in the MLP weights (stage D).

        Points are sorted by cluster and evaluated in padded [k, m, 3] blocks of about `chunk`
        points (k * m <= chunk + k), holding only the clusters that still have points left, so
        memory is bounded whatever N and padding waste stays below one block row per cluster.
        Padding rows repeat a real point of the same cluster and are discarded. Default chunk:
        8192 on CPU (cache-sized blocks decode about 2x faster than big ones: tanh and the bias
        copies are memory-bound), 131072 on GPU.

        Equals evaluating each cluster alone: bitwise on the CPUs tested, and to float32 rounding
        (< 1e-6) in general, as batched GEMM kernels may block the sums differently."""
        if chunk is None:
            chunk = 1 << 17 if positions.is_cuda else 1 << 13
        if positions.shape[0] != labels.shape[0]:
            raise ValueError(f"{positions.shape[0]} positions but {labels.shape[0]} labels")
        n = positions.shape[0]
        if n == 0:
            return positions.new_zeros(0, self.out_dim)
        if int(labels.min()) < 0 or int(labels.max()) >= self.n_clusters:
            raise ValueError(f"labels must lie in [0, {self.n_clusters})")
        order = torch.argsort(labels, stable=True)
        sorted_pos = positions[order]
        counts = torch.bincount(labels, minlength=self.n_clusters)
        starts = torch.cumsum(counts, 0) - counts
        counts_list = counts.tolist()

        # Each point's row in the concatenated (padded) block outputs: one gather at the end
        # instead of a masked copy per block, which autograd would undo with a scatter each.
        source_row = torch.empty(n, dtype=torch.long, device=positions.device)
        blocks: List[Tensor] = []
        m0 = offset = 0
        while True:
            active = [k for k, c in enumerate(counts_list) if c > m0]
            if not active:
                break
            clusters = torch.tensor(active, device=positions.device)
            m = -(-chunk // len(active))
            cols = torch.arange(m0, m0 + m, device=positions.device)
            valid = cols[None] < counts[clusters, None]  # [k, m]
            idx = torch.where(valid, starts[clusters, None] + cols[None], starts[clusters, None])
            # All clusters active (the common first block): no weight gather needed.
            out = self._forward(sorted_pos[idx], None if len(active) == self.n_clusters else clusters)
            blocks.append(out.reshape(-1, self.out_dim))
            rows = offset + torch.arange(idx.numel(), device=positions.device).view_as(idx)
            source_row[order[idx[valid]]] = rows[valid]
            offset += idx.numel()
            m0 += m
        return torch.cat(blocks)[source_row]


def _importance_sampler(labels: Tensor, weights: Tensor, n_clusters: int, importance_sampling: bool):
    """Returns sample(generator, batch) -> (idx [K, B] into the inputs, factor [K, B] or None)
    drawing `batch` points per cluster with replacement: with probability S_j / sum_P S (then
    the plain mean of the squared errors is an unbiased estimate of Eq. 3), or uniformly with
    factor S_j / mean_P S (the weighted mean, also unbiased, but with the variance of S)."""
    device = labels.device
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=n_clusters)
    starts = torch.cumsum(counts, 0) - counts
    last = (starts + counts - 1).clamp_min(0)  # an empty cluster points at a neighbour's row (masked)
    w = weights[order].double()
    totals = torch.zeros(n_clusters, dtype=torch.float64, device=device).index_add_(0, labels[order], w)
    # A cluster with no importance at all falls back to equal weights (Eq. 3 is 0/0 there).
    w = torch.where(totals[labels[order]] > 0, w, torch.ones_like(w))
    totals = torch.zeros_like(totals).index_add_(0, labels[order], w)
    if importance_sampling:
        cum = torch.cumsum(w, 0)
        cum_start = torch.cumsum(totals, 0) - totals
    else:
        factor_sorted = (w / (totals / counts.clamp_min(1).double())[labels[order]]).float()

    def sample(gen: torch.Generator, batch: int):
        u = torch.rand(n_clusters, batch, generator=gen, device=device, dtype=torch.float64)
        if importance_sampling:
            # Inverse CDF within the cluster's slice of the running sum; right=True skips S_j = 0.
            idx = torch.searchsorted(cum, cum_start[:, None] + u * totals[:, None], right=True)
        else:
            idx = starts[:, None] + (u * counts[:, None]).long()
        idx = torch.minimum(torch.maximum(idx, starts[:, None]), last[:, None])  # rounding at slice edges
        return order[idx], (None if importance_sampling else factor_sorted[idx])

    return sample


def fit_field(field: ClusteredMLPField, positions: Tensor, labels: Tensor, targets: Tensor,
              weights: Optional[Tensor], iterations: int, lr: float = 1e-2, lr_final: float = 1e-4,
              batch_per_cluster: int = 4096, importance_sampling: bool = True, seed: int = 0,
              progress: Optional[Callable[[int, float], None]] = None) -> List[float]:
    """Fits every cluster's MLP to its Gaussians (stage C), all clusters in each batched step.

    Loss (NEURALGS.md, Eq. 3), per cluster P, averaged over the non-empty clusters:
        L_P = sum_{j in P} S_j ||F(x_j) - y_j||^2 / (D sum_{j in P} S_j)
    The 1/D and the average over clusters (the spec sums) only rescale each cluster's
    gradient by a constant, which Adam ignores; they make the value read as a weighted
    per-attribute MSE in the normalised [-1, 1] space, comparable across SH degrees and K.

    Each step draws `batch_per_cluster` points per cluster with replacement. importance_sampling
    (default) draws j with probability S_j / sum_P S and takes the plain MSE: an unbiased
    estimate of L_P with lower variance than uniform draws weighted by S_j (the other setting),
    because importance scores are heavy-tailed and uniform batches mostly hold near-zero weights.

    Adam, learning rate decaying exponentially from `lr` to `lr_final` over `iterations` (the
    paper gives none). 1e-2 -> 1e-4 fitted lower than 5e-3 and 3e-3 at 1-1.5k steps for tanh
    MLPs of width 64 and 128 on [-1, 1] targets, smooth or half noise, and stayed stable.

    positions [N, 3] world (same space as the field's boxes); labels [N]; targets [N, D]
    normalised attributes; weights [N] importance S_j >= 0, or None for equal weights.
    progress(step, loss) is called after every step. Deterministic for a seed on a given device.
    Returns the per-step mini-batch losses.
    """
    n = positions.shape[0]
    if labels.shape[0] != n or targets.shape[0] != n:
        raise ValueError(f"positions, labels and targets disagree on N: {n}, {labels.shape[0]}, {targets.shape[0]}")
    if targets.shape[1] != field.out_dim:
        raise ValueError(f"targets have {targets.shape[1]} attributes, the field predicts {field.out_dim}")
    if weights is None:
        weights = torch.ones(n, device=positions.device)
    if bool((weights < 0).any()):
        raise ValueError("importance weights must be >= 0")
    if n == 0 or iterations <= 0:
        return []
    device = field.bounds_min.device
    positions, labels, targets, weights = (t.detach().to(device) for t in (positions, labels, targets, weights))
    positions, targets = positions.float(), targets.float()
    k = field.n_clusters
    nonempty = (torch.bincount(labels, minlength=k) > 0).float()[:, None]  # [K, 1]
    sample = _importance_sampler(labels, weights, k, importance_sampling)

    gen = torch.Generator(device=device).manual_seed(seed)
    optimizer = torch.optim.Adam(field.parameters(), lr=lr)
    losses: List[float] = []
    for step in range(iterations):
        for group in optimizer.param_groups:
            group["lr"] = lr * (lr_final / lr) ** (step / max(iterations - 1, 1))
        idx, factor = sample(gen, batch_per_cluster)
        err = (field.forward_grouped(positions[idx]) - targets[idx]).square().mean(dim=-1)  # [K, B]
        if factor is not None:
            err = err * factor
        loss = (err.mean(dim=1, keepdim=True) * nonempty).sum() / nonempty.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step, losses[-1])
    return losses


def weighted_mse(field: ClusteredMLPField, positions: Tensor, labels: Tensor, targets: Tensor,
                 weights: Optional[Tensor] = None) -> Tensor:
    """Exact Eq. 3 loss per cluster [K] over all points (the value `fit_field` estimates per
    step; NaN for an empty or zero-weight cluster): sum_P S_j mean_D (F(x_j) - y_j)^2 / sum_P S_j."""
    with torch.no_grad():
        err = (field.decode(positions, labels) - targets).square().mean(dim=-1)
    if weights is None:
        weights = torch.ones_like(err)
    k = field.n_clusters
    num = torch.zeros(k, dtype=err.dtype, device=err.device).index_add_(0, labels, weights * err)
    den = torch.zeros(k, dtype=err.dtype, device=err.device).index_add_(0, labels, weights.to(err.dtype))
    return num / den


def field_from_state_dict(state_dict: Mapping[str, Tensor], activation: str = "tanh",
                          weight_precision: str = "float16") -> ClusteredMLPField:
    """A field rebuilt from `state_dict()` alone: depth, width and frequencies are read off
    the weight shapes (activation and precision are not in the tensors, so they are passed in)."""
    first = state_dict["weights.0"]
    depth = sum(1 for name in state_dict if name.startswith("weights."))
    config = FieldConfig(n_frequencies=(first.shape[1] - 3) // 6, width=first.shape[2] if depth > 1 else 1,
                         depth=depth, activation=activation, weight_precision=weight_precision)
    state_dict = {name: t.float() if t.is_floating_point() else t for name, t in state_dict.items()}
    return ClusteredMLPField.from_state_dict(config, state_dict)


def decode_normalized(field: ClusteredMLPField, positions: Tensor, labels: Tensor,
                      residual_columns: Optional[Tensor] = None, residuals: Optional[Tensor] = None) -> Tensor:
    """Normalised attributes [N, D]: every position through its cluster's MLP, plus the stored
    `residuals` [N, C] (already at their steps) on attribute columns `residual_columns` [C].
    Differentiable in the MLP weights and the residuals."""
    normalized = field.decode(positions, labels)
    if residual_columns is not None and residual_columns.numel():
        normalized = normalized.index_add(1, residual_columns.to(normalized.device), residuals.to(normalized))
    return normalized


def decode_gaussians(field: ClusteredMLPField, positions: Tensor, labels: Tensor, attribute_mins: Tensor,
                     attribute_maxs: Tensor, sh_degree: int, residual_columns: Optional[Tensor] = None,
                     residuals: Optional[Tensor] = None):
    """The Gaussians a compressed scene describes (`decode_normalized`), the normalisation
    table undone."""
    from neuralgs_ns.compress.clustering import NormalizationTable, gaussians_from_attributes

    normalized = decode_normalized(field, positions, labels, residual_columns, residuals)
    attributes = NormalizationTable(attribute_mins, attribute_maxs).denormalize(normalized)
    return gaussians_from_attributes(positions, attributes, sh_degree)

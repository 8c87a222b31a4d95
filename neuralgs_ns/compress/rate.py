"""Rate choices made per scene: the position grid, the MLP width and stage D's length.

A file's bytes are positions (about 3 bits per Gaussian per grid bit) plus MLP weights (a
fixed cost per cluster). On a large scene the positions dominate; on a small one the MLPs do:
the cpu preset's 12 clusters of 4 x 64 MLPs cost 49 bits per Gaussian on a 30k-Gaussian
scene against 25 on lego-200's 118k. These choices keep small scenes small without touching
large ones (lego-200 gets the same grid, width and steps as with fixed settings):

- the position grid is the coarsest whose snapping the teacher's own renders barely notice;
- the MLP width is capped so the MLPs stay under a bit budget per Gaussian;
- stages C and D get steps in inverse proportion to the Gaussians kept, within the preset's
  bounds: small scenes, whose steps are cheap, get more; very large ones fewer (`neuralgs compress`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from neuralgs_ns.codec.quantize import MAX_POSITION_BITS, residual_codes, snap_positions
from neuralgs_ns.gaussians import Gaussians

MIN_AUTO_POSITION_BITS = 10
SNAP_PSNR_DB = 40.5
"""Default for `choose_position_bits`. Measured in compress runs (8 training views of the
pruned teacher): lego-200 renders at 45.0 dB snapped to 13 bits and 39.9 dB at 12; the 50k
.ply at 41.2 dB at 11 bits and 35.6 dB at 10. 40.5 dB keeps both 0.6 dB or more from the
threshold, choosing 13 and 11 bits. Trained models moved to those grids lost 0.009 dB (lego,
13 bits, against 16) and 0.078 dB (50k .ply, 11 bits, against 13)."""
MLP_WIDTH_STEP = 8
MIN_MLP_WIDTH = 16
STEPS_REFERENCE_GAUSSIANS = 90_000
"""A scene compressed to n Gaussians gets the preset's fitting (stage C) and fine-tune (stage
D) steps times STEPS_REFERENCE_GAUSSIANS / n, bounded by the preset's `small_scene_factor`
(3 for the cpu preset, 1 for the paper's) and `large_scene_factor` (0.2 and 1): a step costs
about in proportion to the Gaussians drawn, so between the bounds stage D's work stays about
constant. Small scenes still gain from steps where large ones have stopped
(docs/tuning.md#per-scene-choices); very large ones, which would otherwise take hours on a
CPU, stay far above a 50x file's quality bar at a fifth of the steps (docs/results/scale.md)."""


@torch.no_grad()
def choose_position_bits(teacher: Gaussians, views: Sequence[Tuple], min_psnr_db: float = SNAP_PSNR_DB
                         ) -> Tuple[int, Dict[int, float]]:
    """(the fewest grid bits per axis, from 10 to 16, at which the teacher with its positions
    snapped to the grid renders at `min_psnr_db` or more against its exact renders (mean PSNR
    over `views`, each (viewmat [4, 4], K [3, 3], width, height)), the PSNR measured at each
    bit count tried). 16 bits if none reaches it.

    Snapping moves a Gaussian by up to half a grid step; whether that shows depends on the
    Gaussians' sizes and the cameras' resolution, which these renders measure directly."""
    exact = render_views(teacher, views)
    measured: Dict[int, float] = {}
    for bits in range(MIN_AUTO_POSITION_BITS, MAX_POSITION_BITS + 1):
        snapped = dataclasses.replace(teacher, means=snap_positions(teacher.means, bits)[0])
        measured[bits] = mean_psnr_against(snapped, views, exact)
        if measured[bits] >= min_psnr_db:
            return bits, measured
    return MAX_POSITION_BITS, measured


PRUNE_STEP = 0.05


@torch.no_grad()
def choose_prune_fraction(teacher: Gaussians, scores: Tensor, views: Sequence[Tuple], max_fraction: float,
                          min_psnr_db: float) -> Tuple[float, Dict[float, float]]:
    """(the largest fraction, from `max_fraction` down in steps of PRUNE_STEP, whose pruned
    teacher (`importance.prune_mask` of `scores` [N]) renders at `min_psnr_db` or more against
    the full teacher's renders (mean PSNR over `views`), 0 if none; the PSNR at each fraction
    tried). Pruning is kept where the training views barely notice it and backed off where
    they do, before any bytes are spent describing what was pruned."""
    from neuralgs_ns.compress.importance import prune_mask

    exact = render_views(teacher, views)
    measured: Dict[float, float] = {}
    fraction = max_fraction
    while fraction > 1e-9:
        measured[fraction] = mean_psnr_against(teacher.subset(prune_mask(scores, fraction)), views, exact)
        if measured[fraction] >= min_psnr_db:
            return fraction, measured
        fraction = round(fraction - PRUNE_STEP, 6)
    return 0.0, measured


def render_views(gaussians: Gaussians, views: Sequence[Tuple]) -> List[Tensor]:
    """`gaussians` rendered (default background) at each of `views` (viewmat, K, width, height)."""
    return [gaussians.render(viewmat[None], K[None], width, height)[0][0] for viewmat, K, width, height in views]


def mean_psnr_against(gaussians: Gaussians, views: Sequence[Tuple], references: Sequence[Tensor]) -> float:
    """Mean PSNR of `gaussians` rendered at `views` against `references` (`render_views` of another scene)."""
    from neuralgs_ns.compress.pipeline_run import psnr

    scores = [psnr(image, reference) for image, reference in zip(render_views(gaussians, views), references)]
    return sum(scores) / len(scores)


def mlp_bytes_per_cluster(n_frequencies: int, width: int, depth: int, out_dim: int, precision: str) -> int:
    """Bytes one cluster's MLP takes in a .ngs file (`codec.weights`)."""
    from neuralgs_ns.codec.weights import cluster_bytes_expected

    n_in = 3 + 6 * n_frequencies
    sizes = [(n_in if layer == 0 else width, out_dim if layer == depth - 1 else width) for layer in range(depth)]
    return cluster_bytes_expected(sizes, precision if precision == "int8" else "float16")


def capped_mlp_width(width: int, n_gaussians: int, n_clusters: int, max_bits_per_gaussian: float,
                     n_frequencies: int, depth: int, out_dim: int, precision: str) -> int:
    """The widest MLP, at most `width` and in steps of 8 (at least 16), whose `n_clusters`
    copies take at most `max_bits_per_gaussian` bits per Gaussian in the file."""
    def bits_per_gaussian(w: int) -> float:
        return 8 * n_clusters * mlp_bytes_per_cluster(n_frequencies, w, depth, out_dim, precision) / max(1, n_gaussians)

    candidate = width
    while candidate > MIN_MLP_WIDTH and bits_per_gaussian(candidate) > max_bits_per_gaussian:
        candidate = max(MIN_MLP_WIDTH, (candidate - 1) // MLP_WIDTH_STEP * MLP_WIDTH_STEP)
    return candidate


def steps_for_scene(base_steps: int, n_gaussians: int, max_factor: float, min_factor: float = 1.0) -> int:
    """Stage C or D steps for a scene compressed to `n_gaussians`: `base_steps` times
    STEPS_REFERENCE_GAUSSIANS / n_gaussians, between `min_factor` and `max_factor` times
    `base_steps`."""
    factor = min(max_factor, max(min_factor, STEPS_REFERENCE_GAUSSIANS / max(1, n_gaussians)))
    return max(1, round(base_steps * factor))


_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
               "g": 10**9, "gb": 10**9, "gib": 2**30}


def parse_size(size: Union[str, int]) -> int:
    """Bytes of a size a user writes: 250000, 500KB, 1.5MB, 800KiB, 2M (K, M, G decimal; KiB,
    MiB, GiB binary; case and a space before the unit do not matter). Raises ValueError with
    a one-line reason."""
    if isinstance(size, int):
        value, unit = float(size), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(size))
        if match is None or match.group(2).lower() not in _SIZE_UNITS:
            raise ValueError(f"{size!r} is not a size (write bytes, or e.g. 500KB, 1.5MB, 800KiB)")
        value, unit = float(match.group(1)), match.group(2).lower()
    n = int(round(value * _SIZE_UNITS[unit]))
    if n <= 0:
        raise ValueError(f"{size!r}: a size must be positive")
    return n


def target_size_bytes(size: Union[str, int, None]) -> Optional[int]:
    """`parse_size` for the --target-size option: None stays None; a size that does not parse
    is a one-line NeuralGSError."""
    from neuralgs_ns.errors import NeuralGSError

    if size is None:
        return None
    try:
        return parse_size(size)
    except ValueError as err:
        raise NeuralGSError(f"--target-size: {err}") from None


# --- a file of a given size (--target-size) ---------------------------------------------------

MAX_PRUNE_FRACTION = 0.9
"""The strongest pruning a size target may ask for: the smallest file keeps 10% of the Gaussians."""
SIZE_MARGIN = 0.97
"""Plans aim at this fraction of the target: stage D moves the corrections' entropy a little,
and what overshoots after it is trimmed (`drop_corrections`)."""
POSITION_BITS_ESTIMATE = 22.0
"""Bits per Gaussian of entropy-coded positions assumed before they are coded (measured 20-26
on 11- to 13-bit grids)."""
ATTRIBUTE_BITS_FLOOR = 20.0
"""Bits per Gaussian of MLP and corrections below which a size target prunes more rather than
describe each Gaussian more coarsely."""


DEFAULT_BITS_PER_GAUSSIAN = 11.0
DEFAULT_BITS_PER_ATTRIBUTE = 0.45
"""The default size rule (`default_target_bytes`): a fixed share per teacher Gaussian for its
position plus a share per attribute it carries. Set so each kind of scene lands just past
issue 12's ratio bars (50x at SH degree 3, 25x at degree 0) and the rest goes to quality;
docs/tuning.md#the-default-size-rule has what it gives."""


def default_target_bytes(n_teacher: int, n_attributes: int) -> int:
    """The file size the cpu preset aims for when the user names none: per Gaussian of the
    teacher, DEFAULT_BITS_PER_GAUSSIAN plus DEFAULT_BITS_PER_ATTRIBUTE for each of its
    `n_attributes` (`clustering.attribute_count`). SH degree 0 (11 attributes) gets 16 bits, 28x
    a float .ply without normals; SH degree 3 (56) gets 36.2 bits, 52x. A rate per
    Gaussian, not per byte of the teacher's file, so a teacher stored with normals, as a
    checkpoint or in half precision gets the same file."""
    bits = DEFAULT_BITS_PER_GAUSSIAN + DEFAULT_BITS_PER_ATTRIBUTE * n_attributes
    return int(math.ceil(n_teacher * bits / 8))


def prune_fraction_for_size(target_bytes: int, n_teacher: int, default_fraction: float) -> float:
    """The paper's pruning (`default_fraction`) unless the target leaves the kept Gaussians
    fewer than POSITION_BITS_ESTIMATE + ATTRIBUTE_BITS_FLOOR bits each: then the fraction (in
    steps of 5%, at most MAX_PRUNE_FRACTION) that keeps as many as afford them."""
    affordable = 8 * SIZE_MARGIN * target_bytes / (POSITION_BITS_ESTIMATE + ATTRIBUTE_BITS_FLOOR)
    needed = 1.0 - affordable / max(1, n_teacher)
    fraction = max(default_fraction, math.ceil(needed * 20 - 1e-9) / 20)
    return min(fraction, MAX_PRUNE_FRACTION)


def prune_fraction_to_spend(target_bytes: int, n_teacher: int, fraction: float,
                            capacity: Callable[[int], float]) -> float:
    """`fraction`, lowered in steps of PRUNE_STEP (to 0) while `capacity(n_kept)` (the most
    bytes the plan can spend on that many kept Gaussians, `plan_capacity`) stays under the
    margin-scaled target: bytes the MLPs cannot take go to keeping Gaussians instead of being
    left unspent (small scenes at large targets)."""
    from neuralgs_ns.compress.importance import pruned_count

    budget = SIZE_MARGIN * target_bytes
    while fraction > 1e-9 and capacity(n_teacher - pruned_count(n_teacher, fraction)) < budget:
        fraction = max(0.0, round(fraction - PRUNE_STEP, 6))
    return fraction


SPEND_CLUSTER_GAUSSIANS = 500
"""A target more than even unpruned Gaussians' widest MLPs can use adds clusters, down to this
many Gaussians each (`clusters_to_spend`)."""


def clusters_to_spend(target_bytes: int, n_gaussians: int, n_clusters: int, capacity: Callable[[int], float]) -> int:
    """The fewest clusters, from `n_clusters` up to n_gaussians // SPEND_CLUSTER_GAUSSIANS, whose
    `capacity(k)` (`plan_capacity` with k clusters) reaches the margin-scaled target; the most
    allowed if none does."""
    budget = SIZE_MARGIN * target_bytes
    most = max(n_clusters, n_gaussians // SPEND_CLUSTER_GAUSSIANS)
    k = n_clusters
    while k < most and capacity(k) < budget:
        k += 1
    return k


def plan_capacity(n_gaussians: int, n_clusters: int, field: "FieldPlan", n_attributes: int) -> float:
    """About the most bytes `plan_for_size` can spend on `n_gaussians` in `n_clusters`: their
    positions (POSITION_BITS_ESTIMATE bits each) and MLPs at their widest (MAX_WIDTH_FACTOR
    times the preset's width). Unbounded with corrections, which take whatever is left."""
    if field.corrections:
        return math.inf
    mlp = mlp_bytes_per_cluster(field.n_frequencies, MAX_WIDTH_FACTOR * field.preset_width, field.depth,
                                n_attributes, field.precision)
    return n_gaussians * POSITION_BITS_ESTIMATE / 8 + n_clusters * mlp


def smallest_size(means: Tensor, n_attributes: int, mlp_bytes: int) -> int:
    """About the smallest file possible (positions of the most important MAX_PRUNE_FRACTION
    kept, on the coarsest grid, one MLP of `mlp_bytes`), judged before stage A from an evenly
    spread subset of the teacher's positions (`means` [N, 3]): importance decides which
    Gaussians survive, not how many."""
    from neuralgs_ns.codec import planned_bytes
    from neuralgs_ns.codec.quantize import position_grid, quantize_positions, storage_order

    n_keep = max(1, len(means) - pruned_count_max(len(means)))
    subset = means[torch.linspace(0, len(means) - 1, n_keep).round().long()].detach().cpu().float()
    grid = position_grid(subset, MIN_AUTO_POSITION_BITS)
    labels = torch.zeros(n_keep, dtype=torch.long)
    subset = subset[storage_order(quantize_positions(subset, grid, MIN_AUTO_POSITION_BITS), labels)]
    return sum(planned_bytes(subset, labels, grid, MIN_AUTO_POSITION_BITS, n_attributes, mlp_bytes).values())


def pruned_count_max(n: int) -> int:
    from neuralgs_ns.compress.importance import pruned_count

    return pruned_count(n, MAX_PRUNE_FRACTION)


def widest_mlp_within(budget_bytes: float, n_clusters: int, max_width: int, n_frequencies: int, depth: int,
                      out_dim: int, precision: str) -> int:
    """The widest MLP (1 to `max_width` units) whose `n_clusters` copies fit in `budget_bytes`;
    0 when even width 1 does not."""
    width = max_width
    while width > 0 and n_clusters * mlp_bytes_per_cluster(n_frequencies, width, depth, out_dim, precision) > budget_bytes:
        width -= 1
    return width


def residual_bytes(values: Tensor, step: float, labels: Tensor) -> int:
    """What corrections `values` [N, C] (normalised units) cost in the file at `step`: the
    residual table plus every cluster's stream (`codec.planned_bytes`' pricing)."""
    from neuralgs_ns.codec.residuals import ResidualTable, planned_bytes

    codes = residual_codes(values.cpu(), torch.full((values.shape[1],), step)).numpy()
    table = ResidualTable.fit(codes, list(range(codes.shape[1])), [step] * codes.shape[1])
    return planned_bytes(codes, table, torch.bincount(labels.cpu()).numpy())


def residual_step_for_budget(values: Tensor, labels: Tensor, budget_bytes: float, min_step: float,
                             max_step: float = 2.0) -> float:
    """The finest step in [min_step, max_step] at which the corrections `values` [N, C] cost at
    most `budget_bytes` (bisection on log step; the cost falls as the step grows)."""
    if residual_bytes(values, min_step, labels) <= budget_bytes:
        return min_step
    lo, hi = math.log(min_step), math.log(max_step)
    for _ in range(30):
        mid = (lo + hi) / 2
        if residual_bytes(values, math.exp(mid), labels) <= budget_bytes:
            hi = mid
        else:
            lo = mid
    return math.exp(hi)


MLP_SHARE = 0.5
"""With corrections on: the MLPs take at most this share of what the positions leave (and no
more than the preset's width); the corrections get the rest."""
MAX_WIDTH_FACTOR = 2
"""A target size widens the MLPs to at most this multiple of the preset's width."""


@dataclasses.dataclass
class FieldPlan:
    """What a size plan needs to know of the MLPs and corrections the preset would build."""

    n_frequencies: int
    depth: int
    precision: str
    preset_width: int
    """The width the preset would give this scene (after its bits-per-Gaussian cap)."""
    corrections: bool
    """Whether corrections (residual attributes) share the budget."""


@dataclasses.dataclass
class SizePlan:
    """How a target size is met (`plan_for_size`)."""

    target_bytes: int
    position_bits: int
    mlp_width: int
    n_clusters: int
    planned: Dict[str, int]
    """Bytes of positions, MLPs and the rest ('other') as planned; corrections get what is left."""
    corrections: bool = True

    def residual_budget(self) -> float:
        """Bytes the corrections may take (`residual_bytes`): the margin-scaled target less
        everything else and their sections' framing."""
        from neuralgs_ns.codec import SECTION_FRAMING_BYTES

        return SIZE_MARGIN * self.target_bytes - sum(self.planned.values()) - SECTION_FRAMING_BYTES * self.n_clusters

    def summary(self) -> str:
        corrections = f", corrections up to {max(0, int(self.residual_budget())):,} B" if self.corrections else ""
        return (f"{self.position_bits}-bit positions ({self.planned['positions']:,} B), MLPs of width "
                f"{self.mlp_width} ({self.planned['mlp_weights']:,} B){corrections}")


def plan_for_size(target_bytes: int, positions: Tensor, labels: Tensor, grid_bits: int, n_attributes: int,
                  field: FieldPlan) -> "SizePlan | None":
    """Position grid and MLP width for a file of at most `target_bytes` (planned at
    SIZE_MARGIN of it), given the kept Gaussians' `positions` [N, 3] and cluster `labels` [N]:

    1. the grid the scene's renders chose (`grid_bits`), coarsened a bit at a time (to 10)
       while the positions and the narrowest MLPs (width MIN_MLP_WIDTH) would not fit;
    2. the MLPs: the widest within the rest (without corrections, up to MAX_WIDTH_FACTOR times
       the preset's width), or with corrections within MLP_SHARE of it and at most the preset's
       width; the corrections get what is left (their step is chosen after stage C, when the
       MLPs' errors are known).

    None when even the coarsest grid leaves no room for the narrowest MLPs."""
    from neuralgs_ns.codec import planned_bytes
    from neuralgs_ns.codec.quantize import position_grid

    budget = SIZE_MARGIN * target_bytes
    k = int(labels.max()) + 1
    for bits in range(grid_bits, MIN_AUTO_POSITION_BITS - 1, -1):
        grid = position_grid(positions.detach().cpu(), bits)
        parts = planned_bytes(positions, labels, grid, bits, n_attributes, 0)
        rest = budget - parts["positions"] - parts["other"] - parts["residuals"]
        if field.corrections:
            rest -= 8 * k + 64  # the correction streams' framing and table, at the least
        narrowest = k * mlp_bytes_per_cluster(field.n_frequencies, MIN_MLP_WIDTH, field.depth, n_attributes,
                                               field.precision)
        if rest < narrowest:
            continue
        if field.corrections:
            width = widest_mlp_within(max(narrowest, MLP_SHARE * rest), k, field.preset_width, field.n_frequencies,
                                      field.depth, n_attributes, field.precision)
        else:
            width = widest_mlp_within(rest, k, MAX_WIDTH_FACTOR * field.preset_width, field.n_frequencies,
                                      field.depth, n_attributes, field.precision)
        parts["mlp_weights"] = k * mlp_bytes_per_cluster(field.n_frequencies, width, field.depth, n_attributes,
                                                         field.precision)
        return SizePlan(target_bytes, bits, width, k, parts, field.corrections)
    return None


def corrections_to_drop(codes: Tensor, steps: Tensor, importance: Tensor, excess_bits: float) -> Tensor:
    """Mask [N, C] of nonzero correction codes [N, C] to set to zero so the file sheds about
    `excess_bits` (10% more, so one pass usually suffices): those whose loss (importance times
    the squared correction, in normalised units) is smallest per bit saved, a code's bits
    priced under the current histogram of its column."""
    codes = codes.cpu()
    importance = importance.detach().float().cpu()
    saved = torch.zeros(codes.shape, dtype=torch.float64)
    for c in range(codes.shape[1]):
        values, counts = torch.unique(codes[:, c], return_counts=True)
        p = counts.double() / counts.sum()
        p_zero = float(p[values == 0].sum()) or 1.0 / len(codes)
        bits = -torch.log2(p[torch.searchsorted(values, codes[:, c].contiguous())])
        saved[:, c] = (bits - (-math.log2(p_zero))).clamp_min(1e-3)
    harm = importance[:, None].double() * (codes.double() * steps.cpu().double()) ** 2
    candidates = (codes != 0).flatten().nonzero()[:, 0]
    order = torch.argsort((harm.flatten() / saved.flatten())[candidates])
    chosen = candidates[order]
    total = torch.cumsum(saved.flatten()[chosen], 0)
    count = int(torch.searchsorted(total, torch.tensor(1.1 * excess_bits, dtype=torch.float64))) + 1
    mask = torch.zeros(codes.numel(), dtype=torch.bool)
    mask[chosen[:count]] = True
    return mask.reshape(codes.shape).to(steps.device)


RESIDUAL_STEPS = tuple(0.5 * 2 ** (-i / 2) for i in range(17))
"""Steps the fidelity rule tries, coarse to fine: 0.5 down to 0.002, each sqrt(2) finer
(half a bit more per coded value)."""


def choose_residual_step(fidelity, min_psnr_db: float, steps: Sequence[float] = RESIDUAL_STEPS
                         ) -> Tuple[float, Dict[float, float]]:
    """(the coarsest of `steps` at which `fidelity(step)` (mean PSNR of the scene decoded with
    corrections at that step against the teacher's renders) reaches `min_psnr_db`, the PSNR
    measured at each step tried). The finest step if none does."""
    measured: Dict[float, float] = {}
    for step in steps:
        measured[step] = fidelity(step)
        if measured[step] >= min_psnr_db:
            return step, measured
    return steps[-1], measured

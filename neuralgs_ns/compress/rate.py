"""Rate choices made per scene: the position grid, the MLP width and stage D's length.

A file's bytes are positions (about 3 bits per Gaussian per grid bit) plus MLP weights (a
fixed cost per cluster). On a large scene the positions dominate; on a small one the MLPs do:
the cpu preset's 12 clusters of 4 x 64 MLPs cost 49 bits per Gaussian on a 30k-Gaussian
scene against 25 on lego-200's 118k. These choices keep small scenes small without touching
large ones (lego-200 gets the same grid, width and steps as with fixed settings):

- the position grid is the coarsest whose snapping the teacher's own renders barely notice;
- the MLP width is capped so the MLPs stay under a bit budget per Gaussian;
- small scenes, whose fine-tune steps are cheap, get more of them (`neuralgs compress`).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence, Tuple

import torch

from neuralgs_ns.codec.quantize import MAX_POSITION_BITS, snap_positions
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
SMALL_SCENE_GAUSSIANS = 60_000
"""Scenes compressed to fewer Gaussians get proportionally more fine-tune steps, up to twice
the preset's: a stage D step costs about in proportion to the Gaussians, so a 30k-Gaussian
scene's 3000 steps take about as long as 750 of lego-200's."""


@torch.no_grad()
def choose_position_bits(teacher: Gaussians, views: Sequence[Tuple], min_psnr_db: float = SNAP_PSNR_DB
                         ) -> Tuple[int, Dict[int, float]]:
    """(the fewest grid bits per axis, from 10 to 16, at which the teacher with its positions
    snapped to the grid renders at `min_psnr_db` or more against its exact renders (mean PSNR
    over `views`, each (viewmat [4, 4], K [3, 3], width, height)), the PSNR measured at each
    bit count tried). 16 bits if none reaches it.

    Snapping moves a Gaussian by up to half a grid step; whether that shows depends on the
    Gaussians' sizes and the cameras' resolution, which these renders measure directly."""
    from neuralgs_ns.compress.pipeline_run import psnr

    def render_all(gaussians: Gaussians) -> List[torch.Tensor]:
        return [gaussians.render(viewmat[None], K[None], width, height)[0][0] for viewmat, K, width, height in views]

    exact = render_all(teacher)
    measured: Dict[int, float] = {}
    for bits in range(MIN_AUTO_POSITION_BITS, MAX_POSITION_BITS + 1):
        snapped = dataclasses.replace(teacher, means=snap_positions(teacher.means, bits)[0])
        scores = [psnr(image, reference) for image, reference in zip(render_all(snapped), exact)]
        measured[bits] = sum(scores) / len(scores)
        if measured[bits] >= min_psnr_db:
            return bits, measured
    return MAX_POSITION_BITS, measured


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


def fine_tune_steps(base_steps: int, n_gaussians: int) -> int:
    """Stage D steps for a scene compressed to `n_gaussians`: `base_steps`, raised in
    proportion for scenes under SMALL_SCENE_GAUSSIANS, at most doubled."""
    scaled = round(base_steps * SMALL_SCENE_GAUSSIANS / max(1, n_gaussians))
    return max(base_steps, min(2 * base_steps, scaled))

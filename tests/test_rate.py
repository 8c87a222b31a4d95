"""Per-scene rate choices (`neuralgs_ns.compress.rate`): the position grid measured from the
teacher's renders, the MLP width against the bytes the codec really writes, stage D's length."""

import math

import pytest
import torch

from neuralgs_ns.codec import weights as weight_coder
from neuralgs_ns.compress.field import ClusteredMLPField, FieldConfig
from neuralgs_ns.compress.pipeline_run import TeacherViews, sphere_cameras
from neuralgs_ns.compress.rate import (MIN_AUTO_POSITION_BITS, capped_mlp_width, choose_position_bits,
                                       fine_tune_steps, mlp_bytes_per_cluster)
from neuralgs_ns.gaussians import Gaussians


def blob_scene(log_scale: float, n=400, seed=0) -> Gaussians:
    """Opaque, colourful Gaussians in a unit ball, all of size exp(log_scale), and two far
    floaters that stretch the bounding box (and so the grid step) 50x, as in real captures."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g)
    means = means / means.norm(dim=-1, keepdim=True) * torch.rand(n, 1, generator=g)
    means[:2] = torch.tensor([[-50.0, -50, -50], [50, 50, 50]])
    return Gaussians(means, torch.full((n, 3), log_scale), torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                     torch.full((n, 1), 3.0), torch.rand(n, 3, generator=g) * 3 - 1.5, torch.zeros(n, 0, 3))


def views_of(scene: Gaussians, n=4, resolution=64):
    return [(viewmat, K, resolution, resolution)
            for _, viewmat, K in sphere_cameras(scene, n, TeacherViews(resolution=resolution))]


def test_sharp_small_gaussians_need_a_finer_grid_than_large_soft_ones():
    sharp, soft = blob_scene(math.log(0.004)), blob_scene(math.log(0.08))
    sharp_bits, sharp_psnr = choose_position_bits(sharp, views_of(sharp), 40.0)
    soft_bits, soft_psnr = choose_position_bits(soft, views_of(soft), 40.0)
    assert sharp_bits > soft_bits
    for bits, measured in ((sharp_bits, sharp_psnr), (soft_bits, soft_psnr)):
        assert measured[bits] >= 40.0
        # Every coarser grid it tried fell short (the choice is the coarsest that passes).
        assert all(psnr < 40.0 for b, psnr in measured.items() if b < bits)
    # Finer grids render closer to the exact positions.
    assert list(sharp_psnr.values()) == sorted(sharp_psnr.values())


def test_an_unreachable_bar_gives_the_finest_grid():
    scene = blob_scene(math.log(0.004))
    bits, measured = choose_position_bits(scene, views_of(scene, n=2), 500.0)
    assert bits == 16 and min(measured) == MIN_AUTO_POSITION_BITS


@pytest.mark.parametrize("precision", ["int8", "float16"])
def test_mlp_bytes_match_what_the_codec_writes(precision):
    config = FieldConfig(n_frequencies=3, width=24, depth=3, weight_precision=precision)
    points = torch.rand(50, 3)
    field = ClusteredMLPField.from_points(config, points, torch.zeros(50, dtype=torch.long), 14, n_clusters=1)
    written = weight_coder.encode_cluster(field.state_dict(), 0, precision)
    assert len(written) == mlp_bytes_per_cluster(3, 24, 3, 14, precision)


def test_the_width_cap_keeps_the_widest_mlp_within_the_budget():
    # The 50k .ply's case: 12 clusters for 30k Gaussians, 56 attributes (SH degree 3).
    def bits(width):
        return 8 * 12 * mlp_bytes_per_cluster(6, width, 4, 56, "int8") / 30_000

    width = capped_mlp_width(64, 30_000, 12, 36.0, 6, 4, 56, "int8")
    assert width % 8 == 0 and bits(width) <= 36.0 < bits(width + 8)
    assert capped_mlp_width(64, 118_363, 24, 36.0, 6, 4, 56, "int8") == 64  # lego-200: under the cap
    assert capped_mlp_width(64, 300, 12, 36.0, 6, 4, 56, "int8") == 16  # never below 16
    assert capped_mlp_width(128, 300, 12, math.inf, 10, 5, 56, "int8") == 128  # no cap: as given


def test_small_scenes_get_up_to_twice_the_fine_tune_steps():
    assert fine_tune_steps(1500, 118_363) == 1500
    assert fine_tune_steps(1500, 60_000) == 1500
    assert fine_tune_steps(1500, 45_000) == 2000
    assert fine_tune_steps(1500, 30_000) == fine_tune_steps(1500, 100) == 3000

"""Correctness of the CPU rasteriser (`neuralgs_ns.render.rasterize` on CPU tensors).

The fast path (torch projection + numba tile kernels with an analytic backward) is checked
against independent references:

* `neuralgs_ns.render.reference.render_dense`: every pixel against every Gaussian in plain
  PyTorch, gradients by autograd (images, alphas, gradients, absgrad);
* gsplat's own PyTorch twins `_fully_fused_projection` / `_spherical_harmonics` (projection
  and SH), which also validate the dense reference itself;
* central finite differences of the fast path (its analytic backward);
* hand-derived facts (tile cut-off, absgrad of a one-pixel Gaussian, symmetry).

Comparisons use float64 unless a test says otherwise: the kernels do their per-pixel maths in
float64 whatever the input dtype, so with float32 inputs a pixel where alpha sits within
rounding of 1/255 may flip, which is a precision artefact rather than a bug.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neuralgs_ns.render import rasterize
from neuralgs_ns.render.cpu import TILE_SIZE, project
from neuralgs_ns.render.reference import project_dense, render_dense, sh_to_color
from neuralgs_ns.render.sh import spherical_harmonics

DIFF = ("means", "quats", "scales", "opacities", "colors", "backgrounds")
IMAGE_ATOL = 1e-4
GRAD_RTOL = 1e-3


# ----------------------------------------------------------------------------- scene helpers


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, -1.0, 0.0)):
    """World-to-camera [4, 4], OpenCV axes (x right, y down, z towards `target`)."""
    eye = torch.tensor(eye, dtype=torch.float64)
    fwd = torch.tensor(target, dtype=torch.float64) - eye
    fwd = fwd / fwd.norm()
    right = torch.linalg.cross(fwd, torch.tensor(up, dtype=torch.float64))
    right = right / right.norm()
    down = torch.linalg.cross(fwd, right)
    rot = torch.stack([right, down, fwd])
    view = torch.eye(4, dtype=torch.float64)
    view[:3, :3] = rot
    view[:3, 3] = -rot @ eye
    return view


EYES = [(0.3, -0.2, -3.0), (2.5, 0.4, -1.6), (-1.8, -1.0, 2.2), (0.2, 2.8, 0.9)]


def cameras(n_cams, width, height, dtype=torch.float64):
    """`n_cams` cameras around the origin, each with its own (off-centre) intrinsics."""
    views, ks = [], []
    for i in range(n_cams):
        views.append(look_at(EYES[i % len(EYES)]))
        f = 1.1 * width * (1.0 + 0.1 * i)
        ks.append(torch.tensor([[f, 0.0, 0.5 * width + 1.3 * i], [0.0, 0.9 * f, 0.5 * height - 0.7 * i], [0.0, 0.0, 1.0]],
                               dtype=torch.float64))
    return torch.stack(views).to(dtype), torch.stack(ks).to(dtype)


def make_scene(n=120, n_cams=3, width=40, height=36, seed=0, *, colors="rgb", sh_degree=None,
               background=True, spread=1.6, scale_range=(0.02, 0.2), opacity_range=(0.1, 0.95),
               dtype=torch.float64):
    """Random Gaussians around the origin plus cameras: a kwargs dict for `rasterize`.

    colors: "rgb" [N, 3], "feat5" [N, 5], "percam4" [C, N, 4], "sh" [N, 16, 3],
    "percam_sh" [C, N, 16, 3] (the SH kinds need `sh_degree`).
    """
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    lo, hi = scale_range
    scene = dict(
        means=(rand(n, 3) - 0.5) * spread,
        quats=torch.randn(n, 4, generator=g, dtype=torch.float64),
        scales=torch.exp(math.log(lo) + rand(n, 3) * math.log(hi / lo)),
        opacities=opacity_range[0] + rand(n) * (opacity_range[1] - opacity_range[0]),
    )
    dim = 3
    if colors == "rgb":
        scene["colors"] = rand(n, 3)
    elif colors == "feat5":
        scene["colors"], dim = rand(n, 5) * 2 - 0.5, 5
    elif colors == "percam4":
        scene["colors"], dim = rand(n_cams, n, 4), 4
    elif colors in ("sh", "percam_sh"):
        shape = (n, 16, 3) if colors == "sh" else (n_cams, n, 16, 3)
        # Large enough that clamp_min(sh + 0.5, 0) clips some colours.
        scene["colors"] = torch.randn(*shape, generator=g, dtype=torch.float64) * 0.4
    else:
        raise ValueError(colors)
    scene["viewmats"], scene["Ks"] = cameras(n_cams, width, height)
    scene["backgrounds"] = rand(n_cams, dim) if background else None
    scene = {k: (v.to(dtype) if v is not None else None) for k, v in scene.items()}
    scene.update(width=width, height=height, sh_degree=sh_degree)
    return scene


def run(fn, scene, weight_seed=123, **kwargs):
    """Renders `scene` with `fn`, backprops a random weighted sum of renders and alphas.

    Returns (renders, alphas, info, grads) where grads maps each input in DIFF (and
    "means2d") to its gradient, or None if it got none.
    """
    inputs = {k: (v.detach().clone().requires_grad_(k in DIFF) if torch.is_tensor(v) else v) for k, v in scene.items()}
    renders, alphas, info = fn(**inputs, **kwargs)
    info["means2d"].retain_grad()
    g = torch.Generator().manual_seed(weight_seed)
    w_r = torch.randn(renders.shape, generator=g, dtype=torch.float64).to(renders.dtype)
    w_a = torch.randn(alphas.shape, generator=g, dtype=torch.float64).to(alphas.dtype)
    loss = (renders * w_r).sum() + (alphas * w_a).sum()
    if loss.requires_grad:
        loss.backward()
    grads = {k: inputs[k].grad if torch.is_tensor(inputs.get(k)) else None for k in DIFF}
    grads["means2d"] = info["means2d"].grad
    return renders.detach(), alphas.detach(), info, grads


def rel_err(got, ref):
    """||got - ref|| / ||ref||, treating a missing gradient as zeros."""
    if got is None and ref is None:
        return 0.0
    if got is None:
        got = torch.zeros_like(ref)
    if ref is None:
        ref = torch.zeros_like(got)
    got, ref = got.double(), ref.double()
    denom = ref.norm()
    return float((got - ref).norm() / denom) if denom > 0 else float(got.norm())


def assert_images_close(fast, ref):
    r1, a1, i1 = fast[:3]
    r2, a2, i2 = ref[:3]
    assert r1.shape == r2.shape and a1.shape == a2.shape
    assert torch.equal(i1["radii"], i2["radii"])
    assert torch.isfinite(r1).all() and torch.isfinite(a1).all()
    err_r = (r1.double() - r2.double()).abs().max().item() if r1.numel() else 0.0
    err_a = (a1.double() - a2.double()).abs().max().item() if a1.numel() else 0.0
    assert err_r < IMAGE_ATOL, f"renders differ by {err_r}"
    assert err_a < IMAGE_ATOL, f"alphas differ by {err_a}"


def assert_grads_close(fast_grads, ref_grads, names=DIFF + ("means2d",), rtol=GRAD_RTOL):
    errors = {k: rel_err(fast_grads[k], ref_grads[k]) for k in names}
    for k in names:
        if fast_grads[k] is not None:
            assert torch.isfinite(fast_grads[k]).all(), f"non-finite gradient for {k}"
    bad = {k: e for k, e in errors.items() if not e < rtol}
    assert not bad, f"relative gradient errors {bad}"
    # Guard against vacuous passes: the geometry really did receive gradient.
    for k in ("means", "opacities", "means2d"):
        assert ref_grads[k] is not None and ref_grads[k].abs().max() > 0, k


# ------------------------------------------------------------------- fast path vs dense reference

MODE_CASES = [
    dict(render_mode=m, rasterize_mode=r)
    for m in ("RGB", "RGB+D", "RGB+ED", "D", "ED")
    for r in ("classic", "antialiased")
]
COLOR_CASES = [
    dict(colors="sh", sh_degree=0),
    dict(colors="sh", sh_degree=1),
    dict(colors="sh", sh_degree=2, rasterize_mode="antialiased"),
    dict(colors="sh", sh_degree=3),
    dict(colors="sh", sh_degree=3, rasterize_mode="antialiased", render_mode="RGB+ED"),
    dict(colors="percam_sh", sh_degree=2),
    dict(colors="feat5"),
    dict(colors="feat5", rasterize_mode="antialiased", render_mode="RGB+D"),
    dict(colors="percam4"),
    dict(colors="percam4", rasterize_mode="antialiased"),
    dict(colors="rgb", background=False),
]


def _case_id(case):
    return "-".join(f"{v}" for v in case.values())


def _split(case):
    scene_keys = ("colors", "sh_degree", "background")
    return {k: v for k, v in case.items() if k in scene_keys}, {k: v for k, v in case.items() if k not in scene_keys}


@pytest.mark.parametrize("case", MODE_CASES + COLOR_CASES, ids=_case_id)
def test_matches_dense_reference(case):
    scene_kw, render_kw = _split(case)
    scene = make_scene(**scene_kw)
    fast = run(rasterize, scene, **render_kw)
    ref = run(render_dense, scene, **render_kw)
    assert ref[1].max() > 0.5, "scene should cover part of the image"
    assert_images_close(fast, ref)
    assert_grads_close(fast[3], ref[3])


def overlap_scene(seed=1):
    """Many large, nearly opaque Gaussians stacked in front of the cameras.

    Pixels reach the 1e-4 transmittance stop; a few opacities above 0.999 hit the alpha clamp.
    """
    scene = make_scene(n=90, seed=seed, spread=0.5, scale_range=(0.08, 0.35), opacity_range=(0.5, 1.0))
    scene["opacities"][::9] = 0.9995
    return scene


def near_scene(seed=2, near=0.05):
    """A normal scene plus Gaussians just in front of camera 0's near plane, large on screen."""
    scene = make_scene(n=60, seed=seed, colors="sh", sh_degree=3)
    g = torch.Generator().manual_seed(seed + 100)
    view = scene["viewmats"][0]
    rot, t = view[:3, :3], view[:3, 3]
    n_near = 8
    depth = near + torch.linspace(0.002, 0.2, n_near, dtype=torch.float64)
    lateral = (torch.rand(n_near, 2, generator=g, dtype=torch.float64) - 0.5) * depth[:, None] * 0.8
    p_cam = torch.cat([lateral, depth[:, None]], dim=1)
    p_world = (p_cam - t) @ rot  # R^T (p - t)
    extra = dict(
        means=p_world,
        quats=torch.randn(n_near, 4, generator=g, dtype=torch.float64),
        scales=torch.rand(n_near, 3, generator=g, dtype=torch.float64) * 0.02 + 0.005,
        opacities=torch.rand(n_near, generator=g, dtype=torch.float64) * 0.5 + 0.3,
        colors=torch.randn(n_near, 16, 3, generator=g, dtype=torch.float64) * 0.4,
    )
    for k, v in extra.items():
        scene[k] = torch.cat([scene[k], v])
    return scene, near


@pytest.mark.parametrize("render_mode,rasterize_mode", [("RGB", "classic"), ("RGB+ED", "antialiased")])
def test_gradients_overlapping_gaussians(render_mode, rasterize_mode):
    scene = overlap_scene()
    fast = run(rasterize, scene, render_mode=render_mode, rasterize_mode=rasterize_mode)
    ref = run(render_dense, scene, render_mode=render_mode, rasterize_mode=rasterize_mode)
    assert sum(ref[2]["n_early_stop"]) > 0, "scene should exercise the 1e-4 early stop"
    assert_images_close(fast, ref)
    assert_grads_close(fast[3], ref[3])


@pytest.mark.parametrize("render_mode,rasterize_mode", [("RGB+D", "classic"), ("RGB", "antialiased")])
def test_gradients_near_camera_gaussians(render_mode, rasterize_mode):
    scene, near = near_scene()
    fast = run(rasterize, scene, near_plane=near, render_mode=render_mode, rasterize_mode=rasterize_mode)
    ref = run(render_dense, scene, near_plane=near, render_mode=render_mode, rasterize_mode=rasterize_mode)
    radii = ref[2]["radii"][0, -8:]
    assert (radii > 0).all() and radii.max() > scene["width"], "near Gaussians should be drawn, large"
    assert_images_close(fast, ref)
    assert_grads_close(fast[3], ref[3])


def test_float32_matches_dense_reference():
    """The production dtype: float32 fast path against the float64 reference."""
    scene64 = make_scene(colors="sh", sh_degree=3, seed=5)
    scene32 = {k: (v.float() if torch.is_tensor(v) else v) for k, v in scene64.items()}
    fast = run(rasterize, scene32, render_mode="RGB+D")
    ref = run(render_dense, scene64, render_mode="RGB+D")
    assert fast[0].dtype == torch.float32 and fast[3]["means"].dtype == torch.float32
    assert_images_close(fast, ref)
    assert_grads_close(fast[3], ref[3])


def test_depth_ties_keep_index_order():
    """Equal depths composite in index order (a stable sort), as gsplat's sort does."""
    width = height = 24
    view = torch.eye(4, dtype=torch.float64)[None]
    ks = torch.tensor([[[30.0, 0, 12], [0, 30, 12], [0, 0, 1]]], dtype=torch.float64)
    scene = dict(
        means=torch.tensor([[0.0, 0.0, 2.0], [0.05, 0.0, 2.0], [-0.05, 0.02, 2.0], [0.0, 0.0, 1.5]], dtype=torch.float64),
        quats=torch.tensor([[1.0, 0, 0, 0]] * 4, dtype=torch.float64),
        scales=torch.full((4, 3), 0.2, dtype=torch.float64),
        opacities=torch.tensor([0.8, 0.7, 0.9, 0.3], dtype=torch.float64),
        colors=torch.eye(4, 3, dtype=torch.float64),
        viewmats=view, Ks=ks, width=width, height=height,
    )
    fast = run(rasterize, scene)
    ref = run(render_dense, scene)
    assert_images_close(fast, ref)
    assert_grads_close(fast[3], ref[3])
    # The tie matters: swapping the two front-most tied Gaussians changes the image.
    swapped = dict(scene)
    perm = torch.tensor([1, 0, 2, 3])
    for k in ("means", "quats", "scales", "opacities", "colors"):
        swapped[k] = scene[k][perm]
    assert (rasterize(**swapped)[0] - fast[0]).abs().max() > 1e-3


def test_tile_cutoff():
    """A Gaussian is drawn only on the tiles its 3-sigma box overlaps, even where alpha >= 1/255.

    One Gaussian at pixel (4, 8.5) with 2D covariance diag(15, 2) (eps2d included): radius
    ceil(3 sqrt(15)) = 12, so its box spans x in (-8, 16) and it touches only tile column 0.
    Pixel x = 16 (tile column 1) would have alpha 0.99 exp(-12.5^2 / 30) ~ 0.0054 > 1/255.
    """
    f, z = 40.0, 2.0
    sx = math.sqrt(15.0 - 0.3) * z / f
    sy = math.sqrt(2.0 - 0.3) * z / f
    kwargs = dict(
        means=torch.tensor([[0.0, 0.0, z]], dtype=torch.float64),
        quats=torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64),
        scales=torch.tensor([[sx, sy, 0.1]], dtype=torch.float64),
        opacities=torch.tensor([0.99], dtype=torch.float64),
        colors=torch.ones(1, 3, dtype=torch.float64),
        viewmats=torch.eye(4, dtype=torch.float64)[None],
        Ks=torch.tensor([[[f, 0, 4.0], [0, f, 8.5], [0, 0, 1]]], dtype=torch.float64),
        width=32, height=16,
    )
    renders, alphas, info = rasterize(**kwargs)
    assert info["radii"].tolist() == [[12]]

    def alpha_at(x):
        return 0.99 * math.exp(-0.5 * (x + 0.5 - 4.0) ** 2 / 15.0)

    assert alpha_at(16) > 1 / 255
    assert alphas[0, 8, 15, 0].item() == pytest.approx(alpha_at(15), rel=1e-9)
    assert alphas[0, :, 16:].abs().max().item() == 0.0
    dense = render_dense(**kwargs)
    assert torch.allclose(dense[1], alphas, atol=1e-12)


def faint_scene(seed=3):
    """A real capture's overdraw: many large, faint, overlapping Gaussians (median opacity
    about 0.05, some below 1/255), elongated at random."""
    scene = make_scene(n=150, seed=seed, spread=0.8, scale_range=(0.03, 0.5), opacity_range=(0.002, 0.1))
    return scene


@pytest.mark.parametrize("render_mode,rasterize_mode", [("RGB", "classic"), ("RGB+ED", "antialiased")])
def test_faint_gaussians_bin_to_fewer_tiles_with_the_same_image(render_mode, rasterize_mode):
    """Tiles where a faint Gaussian's alpha cannot reach 1/255 are not binned (fewer
    tile-Gaussian pairs), and the image and gradients still match the dense reference, which
    draws every Gaussian on its whole 3-sigma box."""
    from neuralgs_ns.render import _cpu_kernels as kernels

    scene = faint_scene()
    fast = run(rasterize, scene, render_mode=render_mode, rasterize_mode=rasterize_mode)
    ref = run(render_dense, scene, render_mode=render_mode, rasterize_mode=rasterize_mode)
    assert_images_close(fast, ref)
    assert_grads_close(fast[3], ref[3])

    info = fast[2]
    args = [info[k].detach().numpy() for k in ("means2d", "radii", "conics", "opacities")]
    order = np.argsort(info["depths"].detach().numpy(), axis=1, kind="stable")
    tiles_x, tiles_y = info["tile_width"], info["tile_height"]
    pairs = kernels.bin_gaussians(order, *args, TILE_SIZE, tiles_x, tiles_y)[0][-1]
    opaque = np.ones_like(args[3])  # alpha reaches 1/255 on the whole 3-sigma box: gsplat's tiles
    pairs_3sigma = kernels.bin_gaussians(order, args[0], args[1], args[2], opaque, TILE_SIZE, tiles_x, tiles_y)[0][-1]
    assert pairs < 0.85 * pairs_3sigma, (pairs, pairs_3sigma)


# ------------------------------------------------------------------------ finite differences


@pytest.mark.parametrize(
    "render_kw",
    [dict(), dict(render_mode="RGB+ED", rasterize_mode="antialiased", sh_degree=1)],
    ids=["rgb-classic", "sh1-ed-antialiased"],
)
def test_finite_differences(render_kw):
    """Analytic gradients of the fast path against central differences of the fast path."""
    sh = render_kw.get("sh_degree") is not None
    scene = make_scene(n=5, n_cams=2, width=20, height=18, seed=7, spread=0.6, scale_range=(0.15, 0.35),
                       opacity_range=(0.3, 0.8), colors="sh" if sh else "rgb", sh_degree=render_kw.get("sh_degree"))
    if sh:
        scene["colors"] = scene["colors"][:, :4].contiguous()
    extra = {k: v for k, v in render_kw.items() if k != "sh_degree"}
    inputs = tuple(scene[k].clone().requires_grad_(True) for k in DIFF)
    g = torch.Generator().manual_seed(3)
    fixed = {k: v for k, v in scene.items() if k not in DIFF}

    def loss(*args):
        renders, alphas, _ = rasterize(**dict(zip(DIFF, args)), **fixed, **extra)
        w_r = torch.randn(renders.shape, generator=g.manual_seed(3), dtype=torch.float64)
        w_a = torch.randn(alphas.shape, generator=g.manual_seed(4), dtype=torch.float64)
        return (renders * w_r).sum() + (alphas * w_a).sum()

    assert (rasterize(**scene, **extra)[1] > 0.1).float().mean() > 0.2, "Gaussians should cover the image"
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------ projection and SH vs gsplat


def projection_scene():
    """Random Gaussians plus awkward ones: behind, straddling the near plane, off-screen,
    beyond the far plane, flat and zero-scale."""
    scene = make_scene(n=60, n_cams=3, seed=11)
    extra_means = torch.tensor(
        [[0.0, 0.0, -6.0], [0.3, -0.2, -3.005], [0.3, -0.2, -2.995], [30.0, 0.0, 0.0], [0.0, 30.0, 0.0],
         [3.0, 0.0, -1.0], [0.0, 0.0, 0.0], [0.2, 0.1, 0.1], [0.0, 0.0, 500.0], [1.6, 0.0, 0.0]],
        dtype=torch.float64,
    )
    extra_scales = torch.tensor(
        [[0.5] * 3, [0.1] * 3, [0.1] * 3, [1.0] * 3, [0.1] * 3, [0.5] * 3, [0.0] * 3, [0.3, 0.0, 0.2], [50.0] * 3,
         [1.0] * 3],
        dtype=torch.float64,
    )
    n = extra_means.shape[0]
    scene["means"] = torch.cat([scene["means"], extra_means])
    scene["scales"] = torch.cat([scene["scales"], extra_scales])
    scene["quats"] = torch.cat([scene["quats"], torch.randn(n, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)])
    return scene


def test_projection_matches_gsplat():
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    scene = projection_scene()
    w, h, near, far = scene["width"], scene["height"], 0.01, 100.0
    covars, _ = _quat_scale_to_covar_preci(scene["quats"], scene["scales"], compute_preci=False)
    expected = _fully_fused_projection(scene["means"], covars, scene["viewmats"], scene["Ks"], w, h, eps2d=0.3,
                                       near_plane=near, far_plane=far, calc_compensations=True)
    ours = project(scene["means"], scene["quats"], scene["scales"], scene["viewmats"], scene["Ks"], w, h, near, far,
                   antialiased=True)
    dense = project_dense(scene["means"], scene["quats"], scene["scales"], scene["viewmats"], scene["Ks"], w, h,
                          near, far, antialiased=True)
    dense = tuple(dense[k] for k in ("radii", "means2d", "depths", "conics", "compensations"))
    radii = expected[0]
    assert radii.dtype == torch.int32
    n_drawn = int((radii > 0).sum())
    assert 0 < n_drawn < radii.numel(), "the scene should have both drawn and culled Gaussians"
    # Some drawn Gaussians lie beyond 1.15x the image, where the Jacobian point is clamped.
    mx, my = expected[1].unbind(-1)
    beyond = (mx < -0.15 * w) | (mx > 1.15 * w) | (my < -0.15 * h) | (my > 1.15 * h)
    assert (beyond & (radii > 0)).sum() >= 2
    for got, name in ((ours, "cpu.project"), (dense, "reference.project_dense")):
        assert got[0].dtype == torch.int32, name
        assert torch.equal(got[0], radii), name
        assert torch.allclose(got[2], expected[2], rtol=1e-12, atol=1e-12), name  # depths, all Gaussians
        on = radii > 0
        for i, what in ((1, "means2d"), (3, "conics"), (4, "compensations")):
            assert torch.allclose(got[i][on], expected[i][on], rtol=1e-9, atol=1e-12), f"{name} {what}"


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_gsplat(degree):
    from gsplat.cuda._torch_impl import _spherical_harmonics

    g = torch.Generator().manual_seed(degree)
    dirs = torch.randn(3, 50, 3, generator=g, dtype=torch.float64) * 2.0  # not unit: both normalise
    coeffs = torch.randn(3, 50, 16, 3, generator=g, dtype=torch.float64)
    expected = _spherical_harmonics(degree, dirs, coeffs)
    assert torch.allclose(spherical_harmonics(degree, dirs, coeffs), expected, rtol=1e-10, atol=1e-12)
    assert torch.allclose(sh_to_color(degree, dirs, coeffs), expected, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------- info dict


def test_info_dict():
    scene = make_scene(n=50, n_cams=2, seed=3)
    renders, alphas, info, grads = run(rasterize, scene, absgrad=True)
    n_cams, n = 2, 50
    assert renders.shape == (n_cams, scene["height"], scene["width"], 3)
    assert alphas.shape == (n_cams, scene["height"], scene["width"], 1)
    assert info["radii"].shape == (n_cams, n) and info["radii"].dtype == torch.int32
    assert (info["radii"] > 0).any()
    assert info["means2d"].shape == (n_cams, n, 2)
    assert info["depths"].shape == (n_cams, n)
    assert info["conics"].shape == (n_cams, n, 3)
    assert info["opacities"].shape == (n_cams, n)
    assert info["width"] == scene["width"] and info["height"] == scene["height"]
    assert info["n_cameras"] == n_cams
    assert info["gaussian_ids"] is None

    grad = info["means2d"].grad
    assert grad is not None and grad.abs().max() > 0
    absgrad = info["means2d"].absgrad
    assert absgrad.shape == (n_cams, n, 2)
    assert (absgrad >= grad.abs() - 1e-12).all()
    assert (absgrad > grad.abs() + 1e-6).any(), "absgrad should differ from |grad| somewhere"
    assert (absgrad[info["radii"] == 0] == 0).all()

    # absgrad against the dense reference, which sums |per-pixel gradient| explicitly.
    ref = run(render_dense, scene, absgrad=True)
    assert rel_err(absgrad, ref[2]["means2d"].absgrad) < 1e-9
    assert rel_err(grad, ref[3]["means2d"]) < 1e-9


def _single_camera(width, height, f=50.0):
    view = torch.eye(4, dtype=torch.float64)[None]
    ks = torch.tensor([[[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]]], dtype=torch.float64)
    return view, ks, f


def test_absgrad_exact_cases():
    """absgrad == |grad| for a Gaussian that touches one pixel; absgrad > 0 = grad for a
    symmetric Gaussian on a symmetric loss."""
    width = height = 32
    view, ks, f = _single_camera(width, height)
    z = 2.0

    def world(px, py):
        return [(px - width / 2) * z / f, (py - height / 2) * z / f, z]

    # Gaussian 0: zero scale, so a 2D variance of 0.3 px^2; opacity 0.015 keeps alpha >= 1/255
    # only at its own pixel (4, 3) (alpha one pixel away <= 0.015 exp(-0.95^2 / 0.6) < 1/255).
    # Gaussian 1: round, centred on the pixel corner (16, 16) at the image centre.
    means = torch.tensor([world(4.55, 3.45), world(16.0, 16.0)], dtype=torch.float64)
    scales = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.1, 0.1]], dtype=torch.float64)
    kwargs = dict(
        means=means, quats=torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=torch.float64), scales=scales,
        opacities=torch.tensor([0.015, 0.7], dtype=torch.float64),
        colors=torch.tensor([[1.0, 0.5, 0.2], [0.3, 0.3, 0.3]], dtype=torch.float64),
        viewmats=view, Ks=ks, width=width, height=height,
    )
    kwargs["means"].requires_grad_(True)
    renders, alphas, info = rasterize(**kwargs, absgrad=True)
    info["means2d"].retain_grad()
    alone = (alphas[0, :, :, 0] > 0) & (torch.arange(width)[None, :] < 8) & (torch.arange(height)[:, None] < 8)
    assert alone.nonzero().tolist() == [[3, 4]], "Gaussian 0 should cover exactly one pixel"
    w = torch.randn(renders.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w[0, 8:24, 8:24] = 1.0  # symmetric around (16, 16), where only Gaussian 1 reaches
    ((renders * w).sum() + alphas[0, 8:24, 8:24].sum()).backward()
    grad, absgrad = info["means2d"].grad[0], info["means2d"].absgrad[0]
    assert grad[0].abs().min() > 0
    assert torch.equal(absgrad[0], grad[0].abs())
    assert grad[1].abs().max() < 1e-12
    assert absgrad[1].min() > 1e-2


# --------------------------------------------------------------------------------- robustness


def _subset(scene, keep):
    """The scene restricted to Gaussians `keep` (index tensor)."""
    out = dict(scene)
    for k in ("means", "quats", "scales", "opacities"):
        out[k] = scene[k][keep]
    per_cam = scene["colors"].dim() == (4 if scene.get("sh_degree") is not None else 3)
    out["colors"] = scene["colors"][:, keep] if per_cam else scene["colors"][keep]
    return out


def _append(scene, extra):
    out = dict(scene)
    for k, v in extra.items():
        out[k] = torch.cat([scene[k], v])
    return out


def test_culled_gaussians_change_nothing():
    """Behind the cameras, fully off-screen or beyond the far plane: same image, zero gradients."""
    scene = make_scene(n=40, n_cams=2, seed=4)
    # Two nearby cameras looking along +z, so "behind" means the same for both.
    scene["viewmats"] = scene["viewmats"][:1].repeat(2, 1, 1)
    scene["viewmats"][1, 0, 3] += 0.2
    extra_means = torch.tensor([[0.0, 0.0, -6.0], [0.5, 0.2, -5.0], [60.0, 0.0, 0.0], [0.0, -60.0, 1.0],
                                [0.0, 0.0, 300.0]], dtype=torch.float64)
    m = extra_means.shape[0]
    extra = dict(means=extra_means, quats=torch.tensor([[1.0, 0.2, 0, 0]] * m, dtype=torch.float64),
                 scales=torch.tensor([[2.0] * 3, [0.3] * 3, [5.0] * 3, [5.0] * 3, [40.0] * 3], dtype=torch.float64),
                 opacities=torch.full((m,), 0.9, dtype=torch.float64), colors=torch.ones(m, 3, dtype=torch.float64))
    full = _append(scene, extra)
    kwargs = dict(far_plane=100.0)
    with_extra = run(rasterize, full, **kwargs)
    without = run(rasterize, scene, **kwargs)
    ref = run(render_dense, full, **kwargs)
    n = scene["means"].shape[0]
    assert (with_extra[2]["radii"][:, n:] == 0).all()
    assert_images_close(with_extra, ref)
    assert torch.equal(with_extra[0], without[0]) and torch.equal(with_extra[1], without[1])
    for k in ("means", "quats", "scales", "opacities", "colors"):
        g = with_extra[3][k]
        assert torch.isfinite(g).all(), k
        assert (g[n:] == 0).all(), k
        assert torch.allclose(g[:n], without[3][k], rtol=1e-12, atol=1e-14), k
    # Sanity: without the far plane, the far Gaussian would be drawn.
    assert (run(rasterize, full)[2]["radii"][:, -1] > 0).all()


@pytest.mark.parametrize("rasterize_mode", ["classic", "antialiased"])
def test_zero_scale_gaussians(rasterize_mode):
    """Zero-scale (and flat) Gaussians: drawn as the 0.3 px^2 blur in classic mode, invisible
    (compensation 0) in antialiased mode; never NaN."""
    scene = make_scene(n=40, n_cams=2, seed=6)
    n = scene["means"].shape[0]
    zero = [0, 5, 9]
    scene["scales"][zero] = 0.0
    scene["scales"][[1, 2], 1] = 0.0  # flat
    scene["opacities"][zero] = 0.95
    fast = run(rasterize, scene, rasterize_mode=rasterize_mode)
    ref = run(render_dense, scene, rasterize_mode=rasterize_mode)
    assert_images_close(fast, ref)
    assert_grads_close(fast[3], ref[3])
    assert (fast[2]["radii"][:, zero] > 0).any()
    if rasterize_mode == "antialiased":
        keep = torch.tensor([i for i in range(n) if i not in zero])
        without = run(rasterize, _subset(scene, keep), rasterize_mode=rasterize_mode)
        assert torch.allclose(fast[0], without[0], atol=1e-12) and torch.allclose(fast[1], without[1], atol=1e-12)


NON_FINITE_CASES = [(field, value) for field in ("means", "quats", "scales", "opacities", "colors", "sh_colors")
                    for value in (float("nan"), float("inf"), -float("inf"))]


@pytest.mark.parametrize("field,value", NON_FINITE_CASES, ids=[f"{f}-{v}" for f, v in NON_FINITE_CASES])
def test_non_finite_gaussians_are_dropped(field, value):
    sh = field == "sh_colors"
    scene = make_scene(n=30, n_cams=2, seed=8, colors="sh" if sh else "rgb", sh_degree=3 if sh else None,
                       dtype=torch.float32)
    field = "colors" if sh else field
    bad = [3, 11]
    scene[field][bad[0]].view(-1)[0] = value
    scene[field][bad[1]].view(-1)[-1] = value
    keep = torch.tensor([i for i in range(30) if i not in bad])
    got = run(rasterize, scene)
    expected = run(rasterize, _subset(scene, keep))
    assert torch.isfinite(got[0]).all() and torch.isfinite(got[1]).all()
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert (got[2]["radii"][:, bad] == 0).all()
    for k in ("means", "quats", "scales", "opacities", "colors", "backgrounds"):
        g = got[3][k]
        assert torch.isfinite(g).all(), k
        if k == "backgrounds":
            assert torch.allclose(g, expected[3][k], rtol=1e-6, atol=1e-6)
            continue
        assert torch.allclose(g[keep], expected[3][k], rtol=1e-5, atol=1e-7), k


def test_empty_scene():
    scene = make_scene(n=0, n_cams=2, seed=0)
    renders, alphas, info, grads = run(rasterize, scene, render_mode="RGB+ED")
    h, w = scene["height"], scene["width"]
    assert renders.shape == (2, h, w, 4) and alphas.shape == (2, h, w, 1)
    assert torch.equal(renders[..., :3], scene["backgrounds"][:, None, None].expand(2, h, w, 3))
    assert (renders[..., 3] == 0).all() and (alphas == 0).all()
    assert info["radii"].shape == (2, 0)
    assert torch.isfinite(grads["backgrounds"]).all()


def test_camera_that_sees_nothing():
    scene = make_scene(n=50, n_cams=3, seed=9)
    scene["viewmats"][1] = look_at((0.0, 0.0, -3.0), target=(0.0, 0.0, -6.0))  # looking away
    fast = run(rasterize, scene, render_mode="RGB+D")
    ref = run(render_dense, scene, render_mode="RGB+D")
    assert (fast[2]["radii"][1] == 0).all()
    assert (fast[1][1] == 0).all()
    assert torch.equal(fast[0][1, ..., :3], scene["backgrounds"][1].expand_as(fast[0][1, ..., :3]))
    assert_images_close(fast, ref)
    assert_grads_close(fast[3], ref[3])


# ---------------------------------------------------------------------------------- bad input


def _bad_inputs():
    base = make_scene(n=10, n_cams=2, seed=0, dtype=torch.float32)
    sh = make_scene(n=10, n_cams=2, seed=0, colors="sh", sh_degree=3, dtype=torch.float32)
    cases = {
        "means-2d": dict(base, means=base["means"][:, :2]),
        "means-3d": dict(base, means=base["means"][..., None]),
        "quats-n": dict(base, quats=base["quats"][:-1]),
        "quats-3": dict(base, quats=base["quats"][:, :3]),
        "scales": dict(base, scales=base["scales"][:, :2]),
        "opacities-n1": dict(base, opacities=base["opacities"][:, None]),
        "opacities-n": dict(base, opacities=base["opacities"][:-1]),
        "colors-n": dict(base, colors=base["colors"][:-1]),
        "colors-cams": dict(base, colors=base["colors"].expand(3, -1, -1)),
        "colors-1d": dict(base, colors=base["colors"][:, 0]),
        "viewmats": dict(base, viewmats=base["viewmats"][:, :3]),
        "Ks-cams": dict(base, Ks=base["Ks"][:1]),
        "Ks-4x4": dict(base, Ks=torch.eye(4).expand(2, 4, 4)),
        "backgrounds-cams": dict(base, backgrounds=base["backgrounds"][:1]),
        "backgrounds-1d": dict(base, backgrounds=base["backgrounds"][0]),
        "backgrounds-channels-2": dict(base, backgrounds=base["backgrounds"][:, :2]),
        "backgrounds-channels-4": dict(base, backgrounds=torch.ones(2, 4)),
        "sh-too-few": dict(sh, colors=sh["colors"][:, :9]),
        "sh-not-rgb": dict(sh, colors=sh["colors"][..., :2]),
        "sh-as-rgb": dict(sh, colors=base["colors"]),
        "sh-degree-4": dict(sh, sh_degree=4, colors=torch.zeros(10, 25, 3)),
        "render-mode": dict(base, render_mode="RGBD"),
        "rasterize-mode": dict(base, rasterize_mode="mip"),
    }
    return cases


BAD = _bad_inputs()


@pytest.mark.parametrize("name", list(BAD))
def test_bad_shapes_raise_value_error(name):
    with pytest.raises(ValueError):
        rasterize(**BAD[name])

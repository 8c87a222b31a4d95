"""Numba CPU kernels: tile binning, front-to-back alpha compositing and its analytic backward.

These mirror gsplat 1.4.0's CUDA `isect_tiles` + `rasterize_to_pixels` (forward and backward):
pixel centres at (x + 0.5, y + 0.5), alpha = min(0.999, opacity * exp(-sigma)), Gaussians with
sigma < 0 or alpha < 1/255 skipped, a pixel stops once its transmittance would fall to 1e-4 or
below (that Gaussian is not blended). Everything here works on numpy arrays; the torch glue is
in `cpu.py`.

Parallelism is over tiles (one tile per task). The backward writes one gradient row per
tile-Gaussian intersection, so no two tasks touch the same memory; a separate pass sums the
rows per Gaussian. That keeps the gradients deterministic.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4

# Columns of the per-intersection gradient rows written by the backward kernel.
_G_MX, _G_MY, _G_CA, _G_CB, _G_CC, _G_OP, _G_AX, _G_AY = range(8)
_N_FIXED_GRADS = 8  # colour gradients follow these columns


@njit(inline="always")
def _tile_span(centre, extent, tile_size, n_tiles):
    """Tiles [t0, t1) along one axis that pixels within `extent` of `centre` fall in."""
    t0 = min(max(int(math.floor((centre - extent) / tile_size)), 0), n_tiles)
    t1 = min(max(int(math.ceil((centre + extent) / tile_size)), 0), n_tiles)
    return t0, t1


@njit(cache=True)
def bin_gaussians(order, means2d, radii, conics, opacities, tile_size, tiles_x, tiles_y):
    """Lists, per tile, the Gaussians that can reach alpha 1/255 in it, sorted front to back.

    order: [C, N] Gaussian indices sorted by depth per camera. means2d [C, N, 2], radii [C, N],
    conics [C, N, 3], opacities [C, N]. A Gaussian's tiles are those of gsplat's square of
    half-width `radius` (3 sigma), cut down to the box around the ellipse where its alpha still
    reaches 1/255: faint Gaussians cover far fewer tiles, and the tiles dropped are ones where
    the compositing kernels would skip every pixel, so the image is the same.
    Returns (offsets [C * tiles + 1], ids [n_isect]): tile k of camera c holds
    ids[offsets[c * tiles + k] : offsets[c * tiles + k + 1]].
    """
    n_cams, n_gauss = radii.shape
    n_tiles = tiles_x * tiles_y
    counts = np.zeros(n_cams * n_tiles + 1, dtype=np.int64)
    rects = np.zeros((n_cams, n_gauss, 4), dtype=np.int32)
    for c in range(n_cams):
        for g in range(n_gauss):
            r = radii[c, g]
            if r <= 0:
                continue
            s_max = _alpha_cutoff(opacities[c, g])
            if s_max < 0.0:
                continue  # rect stays empty
            ex = float(r)
            ey = float(r)
            ca = conics[c, g, 0]
            cb = conics[c, g, 1]
            cc = conics[c, g, 2]
            det = ca * cc - cb * cb
            if det > 0.0:
                # sigma = 0.5 d^T conic d <= s_max: an ellipse whose box has half-widths
                # sqrt(2 s_max cov_xx), sqrt(2 s_max cov_yy); one pixel of margin as the kernels.
                ex = min(ex, math.sqrt(2.0 * s_max * cc / det) + 1.0)
                ey = min(ey, math.sqrt(2.0 * s_max * ca / det) + 1.0)
            x0, x1 = _tile_span(means2d[c, g, 0], ex, tile_size, tiles_x)
            y0, y1 = _tile_span(means2d[c, g, 1], ey, tile_size, tiles_y)
            rects[c, g, 0] = x0
            rects[c, g, 1] = y0
            rects[c, g, 2] = x1
            rects[c, g, 3] = y1
            for yy in range(y0, y1):
                for xx in range(x0, x1):
                    counts[c * n_tiles + yy * tiles_x + xx + 1] += 1
    offsets = np.cumsum(counts)
    cursor = offsets[:-1].copy()
    ids = np.empty(offsets[-1], dtype=np.int32)
    for c in range(n_cams):
        for k in range(n_gauss):
            g = order[c, k]
            if radii[c, g] <= 0:
                continue
            for yy in range(rects[c, g, 1], rects[c, g, 3]):
                for xx in range(rects[c, g, 0], rects[c, g, 2]):
                    t = c * n_tiles + yy * tiles_x + xx
                    ids[cursor[t]] = g
                    cursor[t] += 1
    return offsets, ids


@njit(inline="always")
def _tile_bounds(job, tiles_x, tiles_y, tile_size, width, height):
    """Camera and pixel rectangle [x0, x1) x [y0, y1) of tile job = camera * tiles + tile."""
    n_tiles = tiles_x * tiles_y
    tile = job % n_tiles
    x0 = (tile % tiles_x) * tile_size
    y0 = (tile // tiles_x) * tile_size
    return job // n_tiles, x0, y0, min(x0 + tile_size, width), min(y0 + tile_size, height)


@njit(inline="always")
def _alpha_cutoff(opac):
    """Largest sigma at which opacity * exp(-sigma) still reaches 1/255, padded for rounding;
    negative when the Gaussian can't reach 1/255 anywhere."""
    if opac < ALPHA_MIN:
        return -1.0
    return math.log(opac / ALPHA_MIN) * (1.0 + 1e-4) + 1e-4


@njit(inline="always")
def _row_range(my, ca, cb, cc, s_max, y0, y1):
    """Rows [py0, py1) of the tile that the ellipse sigma <= s_max touches (one row of margin)."""
    det = ca * cc - cb * cb
    if s_max < 0.0:
        return y0, y0
    if not det > 0.0:
        return y0, y1
    ey = math.sqrt(2.0 * s_max * ca / det) + 1.0
    py0 = max(y0, int(math.floor(my - 0.5 - ey)))
    py1 = min(y1, int(math.ceil(my - 0.5 + ey)) + 1)
    return py0, max(py0, py1)


@njit(inline="always")
def _col_range(mx, dy, ca, cb, cc, s_max, x0, x1):
    """Columns [px0, px1) of one row (offset dy = my - row centre) inside the ellipse
    sigma <= s_max, one column of margin. Skipping the pixels outside cannot change the
    result: alpha is below 1/255 there."""
    if not ca > 0.0:
        return x0, x1
    # sigma(dx) = 0.5 * (ca dx^2 + 2 cb dy dx + cc dy^2) <= s_max, a quadratic in dx.
    disc = (cb * dy) ** 2 - ca * (cc * dy * dy - 2.0 * s_max)
    if disc < 0.0:
        return x0, x0
    root = math.sqrt(disc)
    dx_lo = (-cb * dy - root) / ca
    dx_hi = (-cb * dy + root) / ca
    px0 = max(x0, int(math.floor(mx - 0.5 - dx_hi)) - 1)
    px1 = min(x1, int(math.ceil(mx - 0.5 - dx_lo)) + 2)
    return px0, max(px0, px1)


@njit(parallel=True, cache=True)
def rasterize_forward(offsets, ids, means2d, conics, colors, opacities, backgrounds,
                      width, height, tile_size, tiles_x, tiles_y):
    """Composites every tile front to back.

    colors [C, N, D], opacities [C, N] (compensation already applied), backgrounds [C, D].
    Returns render [C, H, W, D], t_final [C, H, W] (transmittance left after the last blended
    Gaussian) and last_ids [C, H, W] (index into `ids` of that Gaussian, -1 if none).
    """
    n_cams = means2d.shape[0]
    dim = colors.shape[2]
    dtype = means2d.dtype
    n_tiles = tiles_x * tiles_y
    render = np.empty((n_cams, height, width, dim), dtype=dtype)
    t_final = np.empty((n_cams, height, width), dtype=dtype)
    last_ids = np.empty((n_cams, height, width), dtype=np.int64)
    for job in prange(n_cams * n_tiles):
        c, x0, y0, x1, y1 = _tile_bounds(job, tiles_x, tiles_y, tile_size, width, height)
        tw = x1 - x0
        n_pix = tw * (y1 - y0)
        trans = np.ones(n_pix, dtype=dtype)
        acc = np.zeros((n_pix, dim), dtype=dtype)
        done = np.zeros(n_pix, dtype=np.bool_)
        last = np.full(n_pix, -1, dtype=np.int64)
        col = np.empty(dim, dtype=dtype)
        n_done = 0
        for k in range(offsets[job], offsets[job + 1]):
            if n_done == n_pix:
                break
            g = ids[k]
            mx = means2d[c, g, 0]
            my = means2d[c, g, 1]
            ca = conics[c, g, 0]
            cb = conics[c, g, 1]
            cc = conics[c, g, 2]
            op = opacities[c, g]
            for d in range(dim):
                col[d] = colors[c, g, d]
            s_max = _alpha_cutoff(op)
            py0, py1 = _row_range(my, ca, cb, cc, s_max, y0, y1)
            for py in range(py0, py1):
                dy = my - (py + 0.5)
                px0, px1 = _col_range(mx, dy, ca, cb, cc, s_max, x0, x1)
                for px in range(px0, px1):
                    p = (py - y0) * tw + (px - x0)
                    if done[p]:
                        continue
                    dx = mx - (px + 0.5)
                    sigma = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
                    if sigma < 0.0:
                        continue
                    alpha = min(ALPHA_MAX, op * math.exp(-sigma))
                    if alpha < ALPHA_MIN:
                        continue
                    next_t = trans[p] * (1.0 - alpha)
                    if next_t <= T_MIN:
                        done[p] = True
                        n_done += 1
                        continue
                    w = alpha * trans[p]
                    for d in range(dim):
                        acc[p, d] += w * col[d]
                    trans[p] = next_t
                    last[p] = k
        for py in range(y0, y1):
            for px in range(x0, x1):
                p = (py - y0) * tw + (px - x0)
                for d in range(dim):
                    render[c, py, px, d] = acc[p, d] + trans[p] * backgrounds[c, d]
                t_final[c, py, px] = trans[p]
                last_ids[c, py, px] = last[p]
    return render, t_final, last_ids


@njit(parallel=True, cache=True)
def rasterize_backward(offsets, ids, means2d, conics, colors, opacities, backgrounds,
                       t_final, last_ids, v_render, v_alpha_out,
                       width, height, tile_size, tiles_x, tiles_y):
    """Gradients of the forward pass, one row per tile-Gaussian intersection.

    Walks each pixel's Gaussians back to front, recovering the transmittance in front of each
    one by dividing T_final by (1 - alpha), as gsplat does. Returns isect_grads
    [n_isect, 8 + D]: d/d(mean2d x, y), d/d(conic a, b, c), d/d(opacity), |d/d mean2d| (x, y,
    summed per pixel, gsplat's "absgrad"), then d/d(colour).
    """
    n_cams = means2d.shape[0]
    dim = colors.shape[2]
    dtype = means2d.dtype
    n_tiles = tiles_x * tiles_y
    grads = np.zeros((ids.shape[0], _N_FIXED_GRADS + dim), dtype=dtype)
    for job in prange(n_cams * n_tiles):
        start = offsets[job]
        end = offsets[job + 1]
        if start == end:
            continue
        c, x0, y0, x1, y1 = _tile_bounds(job, tiles_x, tiles_y, tile_size, width, height)
        tw = x1 - x0
        n_pix = tw * (y1 - y0)
        trans = np.empty(n_pix, dtype=dtype)
        tfin = np.empty(n_pix, dtype=dtype)
        last = np.empty(n_pix, dtype=np.int64)
        v_c = np.empty((n_pix, dim), dtype=dtype)
        v_a = np.empty(n_pix, dtype=dtype)
        bg_dot = np.empty(n_pix, dtype=dtype)
        buf = np.zeros((n_pix, dim), dtype=dtype)
        max_last = -1
        for py in range(y0, y1):
            for px in range(x0, x1):
                p = (py - y0) * tw + (px - x0)
                tfin[p] = t_final[c, py, px]
                trans[p] = tfin[p]
                last[p] = last_ids[c, py, px]
                max_last = max(max_last, last[p])
                v_a[p] = v_alpha_out[c, py, px]
                s = 0.0
                for d in range(dim):
                    v_c[p, d] = v_render[c, py, px, d]
                    s += backgrounds[c, d] * v_c[p, d]
                bg_dot[p] = s
        col = np.empty(dim, dtype=dtype)
        g_col = np.empty(dim, dtype=dtype)
        for k in range(max_last, start - 1, -1):
            g = ids[k]
            mx = means2d[c, g, 0]
            my = means2d[c, g, 1]
            ca = conics[c, g, 0]
            cb = conics[c, g, 1]
            cc = conics[c, g, 2]
            op = opacities[c, g]
            for d in range(dim):
                col[d] = colors[c, g, d]
                g_col[d] = 0.0
            # Per-Gaussian sums kept in locals: written to memory once, not once per pixel.
            g_mx = g_my = g_ca = g_cb = g_cc = g_op = g_ax = g_ay = 0.0
            s_max = _alpha_cutoff(op)
            py0, py1 = _row_range(my, ca, cb, cc, s_max, y0, y1)
            for py in range(py0, py1):
                dy = my - (py + 0.5)
                px0, px1 = _col_range(mx, dy, ca, cb, cc, s_max, x0, x1)
                for px in range(px0, px1):
                    p = (py - y0) * tw + (px - x0)
                    if k > last[p]:
                        continue
                    dx = mx - (px + 0.5)
                    sigma = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
                    if sigma < 0.0:
                        continue
                    vis = math.exp(-sigma)
                    alpha = min(ALPHA_MAX, op * vis)
                    if alpha < ALPHA_MIN:
                        continue
                    ra = 1.0 / (1.0 - alpha)
                    trans[p] *= ra
                    t = trans[p]
                    fac = alpha * t
                    v_alpha = 0.0
                    for d in range(dim):
                        g_col[d] += fac * v_c[p, d]
                        v_alpha += (col[d] * t - buf[p, d] * ra) * v_c[p, d]
                        buf[p, d] += col[d] * fac
                    v_alpha += tfin[p] * ra * (v_a[p] - bg_dot[p])
                    if op * vis <= ALPHA_MAX:
                        v_sigma = -op * vis * v_alpha
                        gx = v_sigma * (ca * dx + cb * dy)
                        gy = v_sigma * (cb * dx + cc * dy)
                        g_mx += gx
                        g_my += gy
                        g_ca += 0.5 * v_sigma * dx * dx
                        g_cb += v_sigma * dx * dy
                        g_cc += 0.5 * v_sigma * dy * dy
                        g_op += vis * v_alpha
                        g_ax += abs(gx)
                        g_ay += abs(gy)
            grads[k, _G_MX] = g_mx
            grads[k, _G_MY] = g_my
            grads[k, _G_CA] = g_ca
            grads[k, _G_CB] = g_cb
            grads[k, _G_CC] = g_cc
            grads[k, _G_OP] = g_op
            grads[k, _G_AX] = g_ax
            grads[k, _G_AY] = g_ay
            for d in range(dim):
                grads[k, _N_FIXED_GRADS + d] = g_col[d]
    return grads


@njit(parallel=True, cache=True)
def sum_isect_grads(offsets, ids, isect_grads, n_gauss, n_tiles):
    """Sums per-intersection gradient rows into per-(camera, Gaussian) rows [C, N, 8 + D]."""
    n_cams = (offsets.shape[0] - 1) // n_tiles
    width = isect_grads.shape[1]
    out = np.zeros((n_cams, n_gauss, width), dtype=isect_grads.dtype)
    for c in prange(n_cams):  # cameras own disjoint output rows
        for k in range(offsets[c * n_tiles], offsets[(c + 1) * n_tiles]):
            g = ids[k]
            for j in range(width):
                out[c, g, j] += isect_grads[k, j]
    return out

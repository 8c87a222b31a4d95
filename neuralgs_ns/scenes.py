"""The procedural demo scene: four textured objects ray cast in numpy, written as a
nerfstudio `blender-data` dataset.

World frame as in Blender: z up, units such that the whole scene fits in [-1.05, 1.05]^2 x
[0, 0.8], inside the Blender dataparser's scene box [-1.5, 1.5]^3. Objects:

- a disc (radius 1.05, the floor at z = 0) with a polar checkerboard,
- a sphere with a longitude/latitude checkerboard,
- a tilted torus with helical stripes,
- a box rotated about z whose faces carry lines of "text" (runs of ink bars).

Every texture has detail of 1.5-4 pixels at the default resolution (96 px), so a compressed
scene that blurs it loses measurably. Shading is Lambertian under two fixed directional lights
plus ambient, so colours are view-independent (what degree-0 SH can represent exactly), and
there are no shadows. The background is transparent.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Tuple

import numpy as np
from PIL import Image

CAMERA_ANGLE_X = 0.6911112070083618
"""Horizontal field of view in radians, the NeRF-Synthetic value (about 39.6 degrees)."""
CAMERA_RADIUS = 3.4
"""Distance from the cameras to `LOOK_AT` (NeRF-Synthetic uses 4): the floor fills most of the frame."""
LOOK_AT = np.array([0.0, 0.0, 0.25])
"""Point every camera looks at: a little above the floor, the middle of the objects."""
BOUNDING_RADIUS = 1.3
"""Radius of a sphere about `LOOK_AT` that holds every object: rays missing it are not traced."""
ELEVATION_RANGE_DEG = (10.0, 75.0)
"""Elevations of the views: never grazing the floor, never straight down."""
SUPERSAMPLING = 3
"""Rays per pixel along each axis; pixels average them (box-filter anti-aliasing)."""

LIGHTS = ((np.array([0.45, -0.35, 0.82]), 0.65), (np.array([-0.6, 0.55, 0.4]), 0.25))
"""Directional lights (direction towards the light, intensity)."""
AMBIENT = 0.3
"""Light reaching every surface regardless of its normal."""

_MISS = np.inf


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _rotate(v: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """`rotation` [3, 3] applied to the row vectors `v` [R, 3]."""
    # Not `v @ rotation.T`: with a transposed view numpy falls back to a loop ~400x slower, and
    # multithreaded BLAS stalls on a busy machine for large v (80 ms for 150k rows on 2 cores).
    return np.einsum("ij,rj->ri", rotation, v)


def _rotation_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rotation_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _two_tone(mask: np.ndarray, colour_a, colour_b) -> np.ndarray:
    """[R] bool -> [R, 3] albedo: `colour_a` where true, `colour_b` elsewhere."""
    return np.where(mask[:, None], np.asarray(colour_a), np.asarray(colour_b))


# Each object offers: intersect(origins [R, 3], unit dirs [R, 3]) -> ray distance t [R] (inf
# on a miss); normal(points [R, 3]) -> outward unit normals; albedo(points) -> RGB in [0, 1];
# area; sample(n, rng) -> n points spread over its surface (uniform in area).


@dataclass(frozen=True)
class _Disc:
    radius: float = 1.05
    sectors: int = 24
    ring_width: float = 0.14

    def intersect(self, o, d):
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -o[:, 2] / d[:, 2]
        p = o + t[:, None] * d
        hit = (t > 0) & (np.hypot(p[:, 0], p[:, 1]) <= self.radius)
        return np.where(hit, t, _MISS)

    def normal(self, p):
        return np.broadcast_to(np.array([0.0, 0.0, 1.0]), p.shape)

    def albedo(self, p):
        sector = np.floor((np.arctan2(p[:, 1], p[:, 0]) + math.pi) / (2 * math.pi) * self.sectors)
        ring = np.floor(np.hypot(p[:, 0], p[:, 1]) / self.ring_width)
        return _two_tone((sector + ring) % 2 == 0, (0.85, 0.78, 0.62), (0.45, 0.52, 0.38))

    @property
    def area(self):
        return math.pi * self.radius**2

    def sample(self, n, rng):
        r = self.radius * np.sqrt(rng.random(n))
        phi = rng.random(n) * 2 * math.pi
        return np.stack([r * np.cos(phi), r * np.sin(phi), np.zeros(n)], axis=-1)


@dataclass(frozen=True)
class _Sphere:
    centre: Tuple[float, float, float] = (-0.5, 0.35, 0.38)
    radius: float = 0.38
    n_lon: int = 16
    n_lat: int = 8

    def intersect(self, o, d):
        oc = o - np.asarray(self.centre)
        b = np.einsum("ij,ij->i", oc, d)
        disc = b * b - (np.einsum("ij,ij->i", oc, oc) - self.radius**2)
        sq = np.sqrt(np.maximum(disc, 0.0))
        t = np.where(-b - sq > 0, -b - sq, -b + sq)  # nearest intersection in front of the origin
        return np.where((disc >= 0) & (t > 0), t, _MISS)

    def normal(self, p):
        return _normalize(p - np.asarray(self.centre))

    def albedo(self, p):
        q = p - np.asarray(self.centre)
        lon = np.floor((np.arctan2(q[:, 1], q[:, 0]) + math.pi) / (2 * math.pi) * self.n_lon)
        lat = np.floor(np.arccos(np.clip(q[:, 2] / self.radius, -1, 1)) / math.pi * self.n_lat)
        return _two_tone((lon + lat) % 2 == 0, (0.85, 0.15, 0.12), (0.95, 0.9, 0.8))

    @property
    def area(self):
        return 4 * math.pi * self.radius**2

    def sample(self, n, rng):
        return np.asarray(self.centre) + self.radius * _normalize(rng.normal(size=(n, 3)))


@dataclass(frozen=True)
class _Torus:
    """Ring of major radius `major` (centre to tube axis) and tube radius `minor`, its axis
    the local z axis, tilted by `tilt` about x. Intersected by sphere tracing its SDF."""

    centre: Tuple[float, float, float] = (0.5, 0.5, 0.32)
    major: float = 0.33
    minor: float = 0.12
    tilt: float = math.radians(35.0)
    stripes: int = 28
    twist: int = 3

    @property
    def _rotation(self):  # local -> world
        return _rotation_x(self.tilt)

    def _to_local(self, p):
        return _rotate(p - np.asarray(self.centre), self._rotation.T)

    def _sdf_local(self, q):
        return np.hypot(np.hypot(q[:, 0], q[:, 1]) - self.major, q[:, 2]) - self.minor

    def intersect(self, o, d, steps: int = 96, tolerance: float = 1e-5):
        # Only rays through the bounding sphere are marched, from where they enter it, and
        # each step only those still marching.
        oc = o - np.asarray(self.centre)
        b = np.einsum("ij,ij->i", oc, d)
        disc = b * b - (np.einsum("ij,ij->i", oc, oc) - (self.major + self.minor) ** 2)
        t_out = np.full(len(o), _MISS)
        idx = np.nonzero(disc > 0)[0]
        sq = np.sqrt(disc[idx])
        t, t_far = np.maximum(-b[idx] - sq, 0.0), -b[idx] + sq
        o_loc, d_loc = self._to_local(o[idx]), _rotate(d[idx], self._rotation.T)
        for _ in range(steps):
            dist = self._sdf_local(o_loc + t[:, None] * d_loc)
            hit = dist < tolerance
            t_out[idx[hit]] = t[hit]
            going = ~hit & (t < t_far)
            idx, t, t_far, o_loc, d_loc = idx[going], t[going] + dist[going], t_far[going], o_loc[going], d_loc[going]
            if len(idx) == 0:
                break
        return t_out

    def normal(self, p):
        q = self._to_local(p)
        ring = self.major * _normalize(np.concatenate([q[:, :2], np.zeros((len(q), 1))], axis=1))
        return _rotate(_normalize(q - ring), self._rotation)

    def albedo(self, p):
        q = self._to_local(p)
        u = np.arctan2(q[:, 1], q[:, 0])  # around the ring
        v = np.arctan2(q[:, 2], np.hypot(q[:, 0], q[:, 1]) - self.major)  # around the tube
        return _two_tone(np.sin(self.stripes * u + self.twist * v) > 0, (0.1, 0.25, 0.75), (0.95, 0.8, 0.2))

    @property
    def area(self):
        return 4 * math.pi**2 * self.major * self.minor

    def sample(self, n, rng):
        # Area element is proportional to (major + minor cos v): rejection-sample v.
        u, v = np.empty(0), np.empty(0)
        while len(u) < n:
            uu, vv = rng.random(2 * n) * 2 * math.pi, rng.random(2 * n) * 2 * math.pi
            keep = rng.random(2 * n) * (self.major + self.minor) < self.major + self.minor * np.cos(vv)
            u, v = np.concatenate([u, uu[keep]]), np.concatenate([v, vv[keep]])
        u, v = u[:n], v[:n]
        rho = self.major + self.minor * np.cos(v)
        q = np.stack([rho * np.cos(u), rho * np.sin(u), self.minor * np.sin(v)], axis=-1)
        return _rotate(q, self._rotation) + np.asarray(self.centre)


@dataclass(frozen=True)
class _TextBox:
    """Cube rotated by `yaw` about z. Each face is a `cells` x `cells` page whose every
    other row is a line of ink runs ("words") on paper, drawn from `seed`."""

    centre: Tuple[float, float, float] = (0.25, -0.45, 0.34)
    half: float = 0.34
    yaw: float = math.radians(25.0)
    cells: int = 11
    seed: int = 0
    pages: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        rng = np.random.default_rng(self.seed)
        pages = np.zeros((6, self.cells, self.cells), dtype=bool)
        for page in pages:
            for row in range(1, self.cells - 1, 2):  # every other row is a line of text
                col = 1 + rng.integers(0, 2)
                while col < self.cells - 1:
                    word = rng.integers(1, 4)
                    page[row, col:min(col + word, self.cells - 1)] = True
                    col += word + 1
        object.__setattr__(self, "pages", pages)

    @property
    def _rotation(self):  # local -> world
        return _rotation_z(self.yaw)

    def _to_local(self, p):
        return _rotate(p - np.asarray(self.centre), self._rotation.T)

    def intersect(self, o, d):
        o_loc, d_loc = self._to_local(o), _rotate(d, self._rotation.T)
        # Slabs; a direction parallel to a face gets a tiny component instead of a 0/0.
        inv = 1.0 / np.where(np.abs(d_loc) < 1e-12, 1e-12, d_loc)
        t0, t1 = (-self.half - o_loc) * inv, (self.half - o_loc) * inv
        t_near = np.minimum(t0, t1).max(axis=1)
        t_far = np.maximum(t0, t1).min(axis=1)
        hit = (t_near <= t_far) & (t_near > 0)
        return np.where(hit, t_near, _MISS)

    def _face(self, q):
        """Face index 0-5 (+x, -x, +y, -y, +z, -z) and in-face coordinates in [0, 1)^2."""
        axis = np.argmax(np.abs(q), axis=1)
        sign = np.take_along_axis(q, axis[:, None], axis=1)[:, 0] < 0
        uv_axes = np.array([[1, 2], [0, 2], [0, 1]])[axis]
        uv = np.take_along_axis(q, uv_axes, axis=1) / (2 * self.half) + 0.5
        return 2 * axis + sign, np.clip(uv, 0.0, 1.0 - 1e-9)

    def normal(self, p):
        face, _ = self._face(self._to_local(p))
        n = np.zeros((len(p), 3))
        n[np.arange(len(p)), face // 2] = np.where(face % 2 == 0, 1.0, -1.0)
        return _rotate(n, self._rotation)

    def albedo(self, p):
        face, uv = self._face(self._to_local(p))
        cell = np.floor(uv * self.cells).astype(int)
        # Rows run down the face (v from top), so lines read horizontally on the side faces.
        ink = self.pages[face, self.cells - 1 - cell[:, 1], cell[:, 0]]
        return _two_tone(ink, (0.08, 0.1, 0.22), (0.93, 0.93, 0.88))

    @property
    def area(self):
        return 6 * (2 * self.half) ** 2

    def sample(self, n, rng):
        face = rng.integers(0, 6, n)
        q = rng.uniform(-self.half, self.half, size=(n, 3))
        q[np.arange(n), face // 2] = np.where(face % 2 == 0, self.half, -self.half)
        return _rotate(q, self._rotation) + np.asarray(self.centre)


def demo_scene_objects(seed: int = 0) -> tuple:
    """The scene's objects (floor disc, sphere, torus, text box); `seed` draws the text."""
    return (_Disc(), _Sphere(), _Torus(), _TextBox(seed=seed))


def sample_surface(n_points: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Points on the objects' surfaces and their albedo, e.g. to seed Gaussians.

    Returns:
        positions [n_points, 3] (world, z up) and albedo [n_points, 3] in [0, 1], uniform over
        the total area (hidden parts, such as the floor under the box, included).
    """
    rng = np.random.default_rng(seed)
    objects = demo_scene_objects(seed)
    areas = np.array([obj.area for obj in objects])
    counts = np.floor(areas / areas.sum() * n_points).astype(int)
    counts[0] += n_points - counts.sum()
    points, colours = [], []
    for obj, count in zip(objects, counts):
        p = obj.sample(int(count), rng)
        points.append(p)
        colours.append(obj.albedo(p))
    return np.concatenate(points), np.concatenate(colours)


def fibonacci_hemisphere(n_views: int, seed: int = 0) -> np.ndarray:
    """Unit view directions [n_views, 3] (scene centre -> camera, z up) spread evenly over
    the band of `ELEVATION_RANGE_DEG`: equal-area latitude steps, golden-angle azimuths,
    the whole spiral turned about z by a seeded angle."""
    lo, hi = (math.sin(math.radians(e)) for e in ELEVATION_RANGE_DEG)
    i = np.arange(n_views)
    z = lo + (hi - lo) * (i + 0.5) / n_views
    azimuth = np.random.default_rng(seed).random() * 2 * math.pi + i * math.pi * (3 - math.sqrt(5))
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(azimuth), r * np.sin(azimuth), z], axis=-1)


def camera_to_world(direction: np.ndarray) -> np.ndarray:
    """Blender/OpenGL camera-to-world [4, 4] (camera x right, y up, looking down -z) of a
    camera at `LOOK_AT + CAMERA_RADIUS * direction` looking at `LOOK_AT`, world z up."""
    back = _normalize(direction)  # the camera's +z points away from what it looks at
    right = _normalize(np.cross(np.array([0.0, 0.0, 1.0]), back))
    up = np.cross(back, right)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, up, back], axis=1)
    c2w[:3, 3] = LOOK_AT + CAMERA_RADIUS * back
    return c2w


@functools.lru_cache(maxsize=4)
def _camera_rays(resolution: int) -> np.ndarray:
    """Unit ray directions [(resolution * SUPERSAMPLING)^2, 3] in OpenGL camera axes, row-major
    over the sub-pixel grid; the same for every view, hence cached."""
    n = resolution * SUPERSAMPLING
    focal = 0.5 * resolution / math.tan(0.5 * CAMERA_ANGLE_X)
    sub = (np.arange(n) + 0.5) / SUPERSAMPLING - 0.5 * resolution  # sub-pixel centres, from the principal point
    x, y = np.meshgrid(sub / focal, sub / focal, indexing="xy")
    rays = _normalize(np.stack([x, -y, -np.ones_like(x)], axis=-1).reshape(-1, 3))
    rays.flags.writeable = False
    return rays


def render_view(c2w: np.ndarray, resolution: int, objects: tuple) -> np.ndarray:
    """Ray casts one square view: straight (not premultiplied) RGBA uint8 [H, W, 4].

    Pixel (row i, column j) covers [j, j + 1) x [i, i + 1) in image coordinates with the
    principal point at the centre, focal length from `CAMERA_ANGLE_X` (the conventions of
    nerfstudio's Blender dataparser); `SUPERSAMPLING`^2 rays per pixel.
    """
    s = SUPERSAMPLING
    dirs = _rotate(_camera_rays(resolution), c2w[:3, :3])
    eye = c2w[:3, 3]

    rgb = np.zeros_like(dirs)
    t = np.full(len(dirs), _MISS)
    # Most rays miss the scene's bounding sphere: trace only the others.
    oc = eye - LOOK_AT
    b = dirs @ oc
    traced = np.nonzero(b * b - (oc @ oc - BOUNDING_RADIUS**2) > 0)[0]
    d = dirs[traced]
    o = np.broadcast_to(eye, d.shape)
    ts = np.stack([obj.intersect(o, d) for obj in objects])  # [n_objects, R]
    nearest = np.argmin(ts, axis=0)
    t[traced] = ts[nearest, np.arange(len(traced))]
    for k, obj in enumerate(objects):
        sel = traced[(nearest == k) & np.isfinite(t[traced])]
        if len(sel) == 0:
            continue
        p = eye + t[sel, None] * dirs[sel]
        normal = obj.normal(p)
        light = np.full(len(sel), AMBIENT)
        for direction, intensity in LIGHTS:
            light += intensity * np.clip(normal @ _normalize(direction), 0.0, None)
        rgb[sel] = np.clip(obj.albedo(p) * light[:, None], 0.0, 1.0)

    alpha = np.isfinite(t).astype(np.float64)
    # Box filter over the sub-samples, in premultiplied colour; stored straight, as PNG wants.
    premult = np.concatenate([rgb * alpha[:, None], alpha[:, None]], axis=1)
    premult = premult.reshape(resolution, s, resolution, s, 4).mean(axis=(1, 3))
    coverage = premult[..., 3:]
    straight = np.where(coverage > 0, premult[..., :3] / np.maximum(coverage, 1e-12), 0.0)
    return np.round(np.concatenate([straight, coverage], axis=-1) * 255).astype(np.uint8)


def make_demo_scene(output_dir: Path, n_train: int = 40, n_val: int = 10, resolution: int = 96, seed: int = 0) -> Path:
    """Renders the demo scene into `output_dir` as a nerfstudio `blender-data` dataset.

    Writes `train/r_{i}.png` and `val/r_{i}.png` (RGBA, transparent background) and
    `transforms_{train,val,test}.json` (test lists the val views). Views come from one
    Fibonacci spiral of `n_train + n_val` directions on the upper hemisphere, the val views
    evenly interleaved with the training ones; cameras at `CAMERA_RADIUS` look at `LOOK_AT`.
    The output is the same bytes for the same arguments.

    Args:
        output_dir: folder to create or fill (existing files of the same names are replaced).
        n_train, n_val: number of views per split (n_val >= 1).
        resolution: image width and height in pixels.
        seed: turns the view spiral and draws the box's text.

    Returns:
        `output_dir`, ready for `ns-train ... blender-data --data output_dir`.
    """
    if n_train < 1 or n_val < 1 or resolution < 16:
        raise ValueError(f"need n_train >= 1, n_val >= 1, resolution >= 16; got {n_train}, {n_val}, {resolution}")
    output_dir = Path(output_dir)
    objects = demo_scene_objects(seed)
    directions = fibonacci_hemisphere(n_train + n_val, seed)
    # Spread the val views along the spiral (i.e. over all elevations).
    val_index = np.round(np.linspace(0, n_train + n_val - 1, n_val)).astype(int)
    splits = {
        "train": np.setdiff1d(np.arange(n_train + n_val), val_index),
        "val": val_index,
    }
    for split, indices in splits.items():
        (output_dir / split).mkdir(parents=True, exist_ok=True)
        frames = []
        for i, view in enumerate(indices):
            c2w = camera_to_world(directions[view])
            rgba = render_view(c2w, resolution, objects)
            Image.fromarray(rgba).save(output_dir / split / f"r_{i}.png")
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": c2w.tolist()})
        meta = json.dumps({"camera_angle_x": CAMERA_ANGLE_X, "frames": frames}, indent=2)
        (output_dir / f"transforms_{split}.json").write_text(meta)
        if split == "val":
            (output_dir / "transforms_test.json").write_text(meta)
    return output_dir

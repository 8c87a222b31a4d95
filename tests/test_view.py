"""`neuralgs view`: the camera it starts from, progressive .ngs decoding, and the viewer
loaded in a real headless Chromium, its screenshot compared with `rasterize`."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from browser import CHROMIUM, HeadlessChromium, free_port, show_in_browser
from neuralgs_ns.cli import main as cli_main
from neuralgs_ns.codec import CompressedScene, decode_progressively, progressive_cluster_counts
from neuralgs_ns.compress.pipeline_run import scene_bulk
from neuralgs_ns.formats import write_ply
from neuralgs_ns.gaussians import SH_C0, Gaussians
from neuralgs_ns.view import UP_AXES, home_camera, scene_stream, viewable_file

# .ci/run sets this: there the browser test must run, not skip.
REQUIRE_BROWSER = os.environ.get("NEURALGS_REQUIRE_BROWSER") == "1"


def three_blobs(n_per_blob: int = 400, seed: int = 0) -> Gaussians:
    """A red, a green and a blue ball of opaque Gaussians side by side along x (SH degree 1),
    plus a few faint far-away strays that the camera must ignore."""
    gen = torch.Generator().manual_seed(seed)
    means, colours = [], []
    for i, rgb in enumerate([(0.9, 0.1, 0.1), (0.1, 0.8, 0.2), (0.1, 0.2, 0.9)]):
        means.append(torch.randn(n_per_blob, 3, generator=gen) * 0.12 + torch.tensor([0.6 * (i - 1), 0.0, 0.0]))
        colours.append(torch.tensor(rgb).expand(n_per_blob, 3))
    strays = 10
    means.append(torch.randn(strays, 3, generator=gen) * 50)
    colours.append(torch.full((strays, 3), 0.5))
    means, colours = torch.cat(means), torch.cat(colours)
    n = len(means)
    opacities = torch.full((n, 1), 4.0)
    opacities[-strays:] = -6.0
    return Gaussians(means=means, scales=torch.full((n, 3), math.log(0.05)),
                     quats=torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4).clone(), opacities=opacities,
                     features_dc=(colours - 0.5) / SH_C0, features_rest=torch.zeros(n, 3, 3))


@pytest.fixture(scope="module")
def small_ngs(tmp_path_factory):
    from test_codec import fake_model

    path = tmp_path_factory.mktemp("ngs") / "scene.ngs"
    model = fake_model(sizes=(300, 150, 60, 20, 1))
    CompressedScene.from_model(model).save(path)
    return path, model


@pytest.mark.parametrize("up", sorted(UP_AXES))
def test_home_camera_is_outside_the_bulk_looking_at_it_from_above(up):
    g = three_blobs()
    centre, radius = scene_bulk(g)
    home = home_camera(g, up)
    assert np.allclose(home.look_at, centre.numpy(), atol=1e-5)
    offset = home.position - home.look_at
    distance = np.linalg.norm(offset)
    assert distance > 1.5 * radius  # outside the bulk, strays notwithstanding
    assert distance < 5 * radius  # and not pushed away by them
    assert np.dot(offset / distance, UP_AXES[up]) == pytest.approx(math.sin(math.radians(30)), abs=1e-6)
    # Every ball is in the field of view.
    forward = -offset / distance
    for x in (-0.6, 0.0, 0.6):
        to_ball = np.array([x, 0.0, 0.0]) - home.position
        angle = math.degrees(math.acos(np.dot(to_ball, forward) / np.linalg.norm(to_ball)))
        assert angle < home.fov_deg / 2


def test_progressive_counts_double_up_to_all_clusters():
    assert progressive_cluster_counts(1) == [1]
    assert progressive_cluster_counts(7) == [1, 2, 4, 7]
    assert progressive_cluster_counts(8) == [1, 2, 4, 8]


def test_a_ngs_file_is_shown_largest_clusters_first_then_whole(small_ngs):
    path, _ = small_ngs
    steps = list(decode_progressively(path))
    full = CompressedScene.load(path).decode()
    counts = [k for k, _, _ in steps]
    n_clusters = steps[0][1]
    assert counts == progressive_cluster_counts(n_clusters) and n_clusters > 1
    sizes = [len(g) for _, _, g in steps]
    assert sizes == sorted(sizes) and sizes[-1] == len(full)
    for name in ("means", "opacities", "features_dc"):
        assert torch.equal(getattr(steps[-1][2], name), getattr(full, name))
        # A prefix holds exactly the first clusters' Gaussians, decoded as in the whole file.
        assert torch.equal(getattr(steps[0][2], name), getattr(full, name)[: sizes[0]])
    statuses = [status for _, status in scene_stream(path)]
    assert statuses[-1] == f"{n_clusters} of {n_clusters} clusters, {len(full):,} Gaussians"


def test_a_run_directory_is_viewed_through_its_scene_file(tmp_path):
    (tmp_path / "config.yml").write_text("")
    assert viewable_file(tmp_path) == tmp_path
    (tmp_path / "scene.ngs").write_bytes(b"")
    assert viewable_file(tmp_path) == tmp_path / "scene.ngs"
    assert viewable_file(tmp_path / "config.yml") == tmp_path / "scene.ngs"


def test_view_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["view", str(tmp_path / "missing.ply")]) == 1
    err = capsys.readouterr().err.strip()
    assert "missing.ply" in err and "\n" not in err
    assert cli_main(["view", str(tmp_path / "missing.ply"), "--port", "70000"]) == 1
    assert "--port" in capsys.readouterr().err


# --- in a real browser -------------------------------------------------------------------------


@pytest.fixture
def chromium(tmp_path):
    if CHROMIUM is None:
        if REQUIRE_BROWSER:
            pytest.fail("NEURALGS_REQUIRE_BROWSER=1 but chromium is not installed")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    browser = HeadlessChromium(tmp_path / "profile", 900, 600)
    yield browser
    browser.close()


def test_the_viewer_shows_the_scene_in_a_real_browser(chromium, tmp_path):
    from nerfstudio.viewer.utils import get_camera

    from neuralgs_ns.models.portable_splatfacto import get_viewmat
    from neuralgs_ns.view import serve

    g = three_blobs()
    path = tmp_path / "blobs.ply"
    write_ply(g, path)
    viewer = serve(path, port=free_port(), host="127.0.0.1", forever=False)
    try:
        shot = show_in_browser(viewer, chromium)
        client = next(iter(viewer.server.get_clients().values()))
        state = viewer.viewer.get_camera_state(client)
        background = torch.tensor(viewer.viewer.control_panel.background_color) / 255
        render_threads = list(viewer.viewer.render_statemachines.values())
    finally:
        viewer.stop()
    # A render thread outliving the viewer aborts the interpreter at exit.
    assert render_threads and not any(thread.is_alive() for thread in render_threads)

    # The render fills the canvas left of the control panel: the client's camera aspect says how wide.
    canvas = chromium.evaluate("JSON.stringify(document.querySelector('canvas').getBoundingClientRect())")
    rect = json.loads(canvas)
    top, height = int(round(rect["top"])), int(rect["height"])
    width = int(round(state.aspect * height))
    assert 200 < width < rect["width"]
    area = shot[top : top + height, int(rect["left"]) : int(rect["left"]) + width]

    camera = get_camera(state, height, width)
    viewmat = get_viewmat(camera.camera_to_worlds.float().reshape(1, 3, 4))
    K = camera.get_intrinsics_matrices().float().reshape(1, 3, 3)
    image, alpha, _ = g.render(viewmat, K, width, height)
    reference = (image[0] + (1 - alpha[0]) * background).clamp(0, 1).numpy()
    empty = background.numpy()

    from_empty = np.abs(area - empty).mean()
    error = np.abs(area - reference).mean()
    assert from_empty > 0.03, "the render area looks like the empty viewer"
    # JPEG at quality 75 and the browser's resampling of the 512-pixel frame to the canvas.
    assert error < 0.25 * np.abs(reference - empty).mean(), f"mean error {error:.4f} against rasterize"
    for x in (-0.6, 0.0, 0.6):  # at each ball's centre, the colour rasterize shows there
        centre = camera.get_intrinsics_matrices()[0] @ (viewmat[0, :3] @ torch.tensor([x, 0.0, 0.0, 1.0]))
        u, v = int(centre[0] / centre[2]), int(centre[1] / centre[2])
        shown = area[v - 3 : v + 4, u - 3 : u + 4].reshape(-1, 3).mean(0)
        expected = reference[v - 3 : v + 4, u - 3 : u + 4].reshape(-1, 3).mean(0)
        assert shown.argmax() == expected.argmax() and np.abs(shown - expected).max() < 0.1, (x, shown, expected)

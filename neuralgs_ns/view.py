"""`neuralgs view FILE`: any splat file in nerfstudio's web viewer, no dataset needed.

The scene is rendered server-side as nerfstudio renders splatfacto (the viewer's own
controls, render and export tabs), by a `PortableSplatfactoModel` holding the file's
Gaussians. The first camera sits outside the scene's bulk and looks at it. A .ngs file is
shown progressively: its largest clusters first, the view filling in as the rest decode.
"""

from __future__ import annotations

import math
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np
import torch

from neuralgs_ns.compress.pipeline_run import TeacherViews, scene_bulk
from neuralgs_ns.gaussians import PARAM_NAMES, Gaussians
from neuralgs_ns.models.neuralgs import COMPRESSED_FILE_NAME
from neuralgs_ns.models.portable_splatfacto import PortableSplatfactoModel, PortableSplatfactoModelConfig

DEFAULT_PORT = 7007  # nerfstudio's viewer port
UP_AXES = {"+z": (0.0, 0.0, 1.0), "-z": (0.0, 0.0, -1.0), "+y": (0.0, 1.0, 0.0), "-y": (0.0, -1.0, 0.0),
           "+x": (1.0, 0.0, 0.0), "-x": (-1.0, 0.0, 0.0)}
HOME_FOV_DEG = TeacherViews.fov_deg
HOME_DISTANCE = TeacherViews.distance  # in scene radii: the bulk fills the view with a margin
HOME_AZIMUTH_DEG, HOME_ELEVATION_DEG = 45.0, 30.0


@dataclass
class HomeCamera:
    """Where the viewer's camera starts, in the scene's units (nerfstudio's world frame)."""

    position: np.ndarray  # [3]
    look_at: np.ndarray  # [3]
    up: np.ndarray  # [3] unit
    fov_deg: float


def home_camera(gaussians: Gaussians, up: str = "+z") -> HomeCamera:
    """A camera outside the bulk of the scene (its median position and 90th-percentile radius,
    so stray far-away Gaussians do not push it away), looking at its centre from 30 degrees
    above the plane orthogonal to `up`."""
    centre, radius = scene_bulk(gaussians)
    centre = centre.double().cpu().numpy()
    up_vec = np.asarray(UP_AXES[up])
    # Two axes spanning the ground plane of `up`.
    helper = np.array([1.0, 0.0, 0.0]) if abs(up_vec[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    side = np.cross(up_vec, helper)
    side /= np.linalg.norm(side)
    front = np.cross(side, up_vec)
    az, el = math.radians(HOME_AZIMUTH_DEG), math.radians(HOME_ELEVATION_DEG)
    direction = math.cos(el) * (math.cos(az) * front + math.sin(az) * side) + math.sin(el) * up_vec
    return HomeCamera(centre + HOME_DISTANCE * radius * direction, centre, up_vec, HOME_FOV_DEG)


def viewable_file(path: Path) -> Path:
    """The file `neuralgs view PATH` shows: PATH itself, or for a neuralgs run (its directory or
    config.yml) the run's compressed scene when it has one."""
    path = Path(path)
    run_dir = path.parent if path.is_file() and path.suffix in (".yml", ".yaml") else path
    if run_dir.is_dir() and (run_dir / COMPRESSED_FILE_NAME).is_file():
        return run_dir / COMPRESSED_FILE_NAME
    return path


def scene_stream(path: Path) -> Iterator[Tuple[Gaussians, str]]:
    """The scene to show, as (Gaussians, what they are): for a .ngs its first 1, 2, 4, ...
    clusters and then all of them; for anything else the whole scene at once."""
    from neuralgs_ns.codec import decode_progressively
    from neuralgs_ns.formats import load_teacher

    path = Path(path)
    if path.suffix.lower() == ".ngs":
        for k, n_clusters, gaussians in decode_progressively(path):
            yield gaussians, f"{k} of {n_clusters} clusters, {len(gaussians):,} Gaussians"
    else:
        gaussians = load_teacher(path)
        yield gaussians, f"{len(gaussians):,} Gaussians"


class SplatViewModel(PortableSplatfactoModel):
    """splatfacto-portable holding a fixed set of Gaussians, rendered at their full SH degree
    (degree 0 included: its features_dc are SH coefficients, not splatfacto's logit colours)."""

    def sh_degree_to_use(self) -> Optional[int]:
        return self.config.sh_degree

    def show(self, gaussians: Gaussians) -> None:
        gaussians = gaussians.to(self.device)
        self.gauss_params = torch.nn.ParameterDict(
            {name: torch.nn.Parameter(getattr(gaussians, name).float(), requires_grad=False)
             for name in PARAM_NAMES})
        self.config.sh_degree = gaussians.sh_degree


def view_model(gaussians: Gaussians, device: str) -> SplatViewModel:
    from nerfstudio.data.scene_box import SceneBox

    lo, hi = gaussians.means.min(dim=0).values, gaussians.means.max(dim=0).values
    config = PortableSplatfactoModelConfig(sh_degree=gaussians.sh_degree, num_random=4, random_scale=1.0)
    config._target = SplatViewModel
    model = SplatViewModel(config=config, scene_box=SceneBox(aabb=torch.stack([lo, hi]).float().cpu()),
                           num_train_data=1)
    model.to(device)
    model.show(gaussians)
    model.eval()
    return model


class _ViewPipeline(torch.nn.Module):
    """What nerfstudio's viewer reads from a pipeline: the model, and a datamanager that says
    the scene has no time dimension."""

    def __init__(self, model: SplatViewModel):
        super().__init__()
        self.model = model
        self.datamanager = _NoDataset()


class _NoDataset:
    includes_time = False


class SplatViewer:
    """nerfstudio's web viewer serving a `SplatViewModel`; `show` swaps the Gaussians."""

    def __init__(self, gaussians: Gaussians, source: Path, *, port: int = DEFAULT_PORT, host: str = "0.0.0.0",
                 up: str = "+z", device: str = "cpu"):
        import viser
        from nerfstudio.configs.base_config import LoggingConfig, ViewerConfig
        from nerfstudio.utils import writer
        from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO, Viewer

        self.scale = VISER_NERFSTUDIO_SCALE_RATIO
        self.model = view_model(gaussians, device)
        self.lock = threading.Lock()
        self._log_dir = tempfile.TemporaryDirectory(prefix="neuralgs-view-")
        config = ViewerConfig(websocket_port=port, websocket_host=host)
        self.viewer = Viewer(config, log_filename=Path(self._log_dir.name) / "viewer_log_filename.txt",
                             datapath=Path(source), pipeline=_ViewPipeline(self.model), train_lock=self.lock)
        # Nothing trains and there are no training cameras: hide those buttons.
        for button in (self.viewer.pause_train, self.viewer.resume_train, self.viewer.hide_images,
                       self.viewer.show_images):
            button.visible = False
        for control in (self.viewer.control_panel._train_speed, self.viewer.control_panel._train_util):
            control.set_hidden(True)
        self.viewer.camera_handles = {}
        logging = LoggingConfig()
        logging.local_writer.enable = False
        writer.setup_local_writer(logging, max_iter=1)  # the render loop reads its timing buffer
        self.server = self.viewer.viser_server
        # nerfstudio's title bar shows its logo from docs.nerf.studio, a broken image offline.
        titlebar = viser.theme.TitlebarConfig(buttons=(
            viser.theme.TitlebarButton(text="NeuralGS paper", icon=None, href="https://arxiv.org/abs/2503.23162"),
            viser.theme.TitlebarButton(text="nerfstudio viewer", icon=None, href="https://docs.nerf.studio"),
        ), image=None)
        self.server.gui.configure_theme(titlebar_content=titlebar, control_layout="collapsible", dark_mode=True,
                                        brand_color=(255, 211, 105))
        self.status = self.server.gui.add_markdown("")
        self.home = home_camera(gaussians, up)
        self.server.scene.set_up_direction(tuple(self.home.up))
        self.server.on_client_connect(self._go_home)

    @property
    def port(self) -> int:
        return self.server.get_port()

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"

    def _go_home(self, client) -> None:
        with client.atomic():
            client.camera.up_direction = tuple(self.home.up)
            client.camera.fov = math.radians(self.home.fov_deg)
            client.camera.position = tuple(self.home.position * self.scale)
            client.camera.look_at = tuple(self.home.look_at * self.scale)

    def show(self, gaussians: Gaussians, status: str = "") -> None:
        """Renders `gaussians` from now on (every connected browser redraws)."""
        with self.lock:
            self.model.show(gaussians)
        self.status.content = status
        self.viewer._trigger_rerender()

    def stop(self) -> None:
        """Ends the render threads, then the server. A render thread left running would render
        while the interpreter shuts down and abort it ("terminate called without an active
        exception"): the server's stop does not end them, as no disconnect arrives after it."""
        machines = list(self.viewer.render_statemachines.values())
        for machine in machines:
            machine.running = False
        for machine in machines:
            machine.join()
        self.server.stop()
        self._log_dir.cleanup()


def serve(path: Path, *, port: int = DEFAULT_PORT, host: str = "0.0.0.0", up: str = "+z", device: str = "cpu",
          forever: bool = True) -> SplatViewer:
    """Opens `path` in the viewer and prints its URL; .ngs files fill in as they decode. Blocks
    until Ctrl-C when `forever`, else returns the running viewer (tests)."""
    import time

    path = viewable_file(path)
    stream = scene_stream(path)
    gaussians, status = next(stream)
    viewer = SplatViewer(gaussians, path, port=port, host=host, up=up, device=device)
    viewer.status.content = status
    print(f"neuralgs view: {path} in nerfstudio's viewer at {viewer.url} (Ctrl-C to stop)", flush=True)
    print(f"  showing {status}", flush=True)
    for gaussians, status in stream:
        viewer.show(gaussians, status)
        print(f"  showing {status}", flush=True)
    if not forever:
        return viewer
    try:
        while True:
            time.sleep(1.0)
    finally:
        viewer.stop()

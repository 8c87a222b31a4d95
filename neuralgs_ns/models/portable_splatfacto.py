"""Splatfacto that trains and renders on CPU or CUDA, with splatfacto's checkpoint format.

`PortableSplatfactoModel` is nerfstudio's `SplatfactoModel` without what ties it to CUDA or to
the network: the seed-colour initialisation and the intrinsics no longer call `.cuda()`,
rendering goes through `neuralgs_ns.render.rasterize` (gsplat on CUDA, the project's kernels on
CPU), and the LPIPS metric, whose AlexNet weights torchvision downloads, is created at first
use and simply left out of the metrics when it cannot be had. Densification and culling are
gsplat's `DefaultStrategy`, configured exactly as splatfacto configures it.

The checkpoint holds splatfacto's keys (`_model.gauss_params.means`, ...) except the frozen
LPIPS network (`_model.lpips.*`): that is an evaluation metric's pretrained AlexNet, not scene
state, so splatfacto checkpoints load here (their `lpips.*` entries are ignored) and ours load
into splatfacto (its LPIPS keeps its own pretrained weights).
"""

from __future__ import annotations

import functools
import hashlib
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Type, Union

import torch
from gsplat.strategy import DefaultStrategy
from pytorch_msssim import SSIM
from torch import Tensor

from nerfstudio.cameras.camera_optimizers import CameraOptimizer
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.scene_box import OrientedBox
from nerfstudio.model_components.lib_bilagrid import BilateralGrid, color_correct
from nerfstudio.models.splatfacto import (
    RGB2SH,
    SplatfactoModel,
    SplatfactoModelConfig,
    num_sh_bases,
    random_quat_tensor,
)
from nerfstudio.utils.colors import get_color
from nerfstudio.utils.rich_utils import CONSOLE

from neuralgs_ns.render import rasterize

LPIPS_DOWNLOAD_TIMEOUT_S = 10.0
"""Socket timeout for fetching LPIPS's AlexNet weights; torchvision's own download has none."""


@dataclass
class PortableSplatfactoModelConfig(SplatfactoModelConfig):
    """Splatfacto that also trains on CPU: same options, same checkpoints, no CUDA required."""

    _target: Type = field(default_factory=lambda: PortableSplatfactoModel)


def get_viewmat(camera_to_worlds: Tensor) -> Tensor:
    """World-to-camera matrices [C, 4, 4] with OpenCV axes from nerfstudio's OpenGL-axes
    camera-to-world [C, 3, 4]; splatfacto's `get_viewmat` without `torch.compile`, which on
    CPU needs a C++ toolchain and spent ~20 s (2 cores) compiling this 4x4 inverse."""
    flip_yz = torch.tensor([[[1, -1, -1]]], device=camera_to_worlds.device, dtype=camera_to_worlds.dtype)
    rot = camera_to_worlds[:, :3, :3] * flip_yz
    rot_inv = rot.transpose(1, 2)
    viewmat = torch.zeros(rot.shape[0], 4, 4, device=rot.device, dtype=rot.dtype)
    viewmat[:, 3, 3] = 1.0
    viewmat[:, :3, :3] = rot_inv
    viewmat[:, :3, 3:4] = -torch.bmm(rot_inv, camera_to_worlds[:, :3, 3:4])
    return viewmat


def _fetch_alexnet_weights(timeout_s: float) -> None:
    """Puts torchvision's AlexNet weights into the torch hub cache unless already there.

    torchvision would download them itself, but with no timeout: behind a firewall that drops
    packets, evaluation would hang for minutes. Once the file is cached torchvision never
    touches the network. The download is checked against the hash in the file name.
    """
    from torchvision.models import AlexNet_Weights

    url = AlexNet_Weights.DEFAULT.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if path.exists():
        return
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        data = response.read()
    hash_prefix = torch.hub.HASH_REGEX.search(path.name).group(1)
    if not hashlib.sha256(data).hexdigest().startswith(hash_prefix):
        raise RuntimeError(f"downloaded {url} does not match its hash")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)


@functools.lru_cache(maxsize=None)
def load_lpips() -> Optional[torch.nn.Module]:
    """The LPIPS (AlexNet) metric, created once per process; None, after a one-time warning,
    when its weights can't be loaded (offline, blocked download, torchvision missing)."""
    try:
        _fetch_alexnet_weights(LPIPS_DOWNLOAD_TIMEOUT_S)
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        return LearnedPerceptualImagePatchSimilarity(normalize=True)
    except (OSError, ImportError, RuntimeError) as err:  # URLError and socket timeouts are OSErrors
        CONSOLE.print(f"[bold yellow]LPIPS is unavailable ({err}); metrics will omit lpips.")
        return None


class PortableSplatfactoModel(SplatfactoModel):
    """nerfstudio's splatfacto with no CUDA assumption; see the module docstring.

    Args:
        config: splatfacto configuration (`PortableSplatfactoModelConfig`).
    """

    config: PortableSplatfactoModelConfig

    def populate_modules(self):
        """Splatfacto's set-up, built on the CPU; the pipeline then moves the model to its device.

        Follows `SplatfactoModel.populate_modules` step by step (same random draws in the same
        order), minus its `.cuda()` on the seed colours and its eager LPIPS download.
        """
        if self.seed_points is not None and not self.config.random_init:
            means = torch.nn.Parameter(self.seed_points[0])
        else:
            means = torch.nn.Parameter((torch.rand((self.config.num_random, 3)) - 0.5) * self.config.random_scale)
        distances, _ = self.k_nearest_sklearn(means.data, 3)
        # Initial scale: the mean distance to the three nearest neighbours.
        avg_dist = torch.from_numpy(distances).mean(dim=-1, keepdim=True)
        scales = torch.nn.Parameter(torch.log(avg_dist.repeat(1, 3)))
        num_points = means.shape[0]
        quats = torch.nn.Parameter(random_quat_tensor(num_points))
        dim_sh = num_sh_bases(self.config.sh_degree)

        if self.seed_points is not None and not self.config.random_init and self.seed_points[1].shape[0] > 0:
            seed_rgb = self.seed_points[1] / 255
            shs = torch.zeros((seed_rgb.shape[0], dim_sh, 3), dtype=torch.float32)
            if self.config.sh_degree > 0:
                shs[:, 0, :3] = RGB2SH(seed_rgb)
            else:
                CONSOLE.log("use color only optimization with sigmoid activation")
                shs[:, 0, :3] = torch.logit(seed_rgb, eps=1e-10)
            features_dc = torch.nn.Parameter(shs[:, 0, :])
            features_rest = torch.nn.Parameter(shs[:, 1:, :])
        else:
            features_dc = torch.nn.Parameter(torch.rand(num_points, 3))
            features_rest = torch.nn.Parameter(torch.zeros((num_points, dim_sh - 1, 3)))

        opacities = torch.nn.Parameter(torch.logit(0.1 * torch.ones(num_points, 1)))
        self.gauss_params = torch.nn.ParameterDict(
            {
                "means": means,
                "scales": scales,
                "quats": quats,
                "features_dc": features_dc,
                "features_rest": features_rest,
                "opacities": opacities,
            }
        )

        self.populate_shared_modules()

        # Densification and culling, configured exactly as splatfacto does.
        self.strategy = DefaultStrategy(
            prune_opa=self.config.cull_alpha_thresh,
            grow_grad2d=self.config.densify_grad_thresh,
            grow_scale3d=self.config.densify_size_thresh,
            grow_scale2d=self.config.split_screen_size,
            prune_scale3d=self.config.cull_scale_thresh,
            prune_scale2d=self.config.cull_screen_size,
            refine_scale2d_stop_iter=self.config.stop_screen_size_at,
            refine_start_iter=self.config.warmup_length,
            refine_stop_iter=self.config.stop_split_at,
            reset_every=self.config.reset_alpha_every * self.config.refine_every,
            refine_every=self.config.refine_every,
            pause_refine_after_reset=self.num_train_data + self.config.refine_every,
            absgrad=self.config.use_absgrad,
            revised_opacity=False,
            verbose=True,
        )
        self.strategy_state = self.strategy.initialize_state(scene_scale=1.0)

    def populate_shared_modules(self) -> None:
        """What every splatfacto-like model here needs besides its Gaussians: camera
        optimiser, metrics, background, crop box, bilateral grid."""
        self.camera_optimizer: CameraOptimizer = self.config.camera_optimizer.setup(
            num_cameras=self.num_train_data, device="cpu"
        )

        from torchmetrics.image import PeakSignalNoiseRatio

        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = SSIM(data_range=1.0, size_average=True, channel=3)
        self.step = 0

        self.crop_box: Optional[OrientedBox] = None
        if self.config.background_color == "random":
            # Viser's default background, used when rendering (training draws a random one).
            self.background_color = torch.tensor([0.1490, 0.1647, 0.2157])
        else:
            self.background_color = get_color(self.config.background_color)
        if self.config.use_bilateral_grid:
            self.bil_grids = BilateralGrid(
                num=self.num_train_data,
                grid_X=self.config.grid_shape[0],
                grid_Y=self.config.grid_shape[1],
                grid_W=self.config.grid_shape[2],
            )

    def load_state_dict(self, state_dict, **kwargs):  # type: ignore
        """Splatfacto's loading, ignoring the `lpips.*` metric weights its checkpoints carry.

        The Gaussians are resized to the checkpoint's count in place: splatfacto replaces the
        Parameters, so on `ns-train --load-dir` the optimisers, built before the checkpoint is
        loaded, go on stepping the discarded ones and the resumed run never trains."""
        state_dict = {key: value for key, value in state_dict.items() if not key.startswith("lpips.")}
        if "means" in state_dict:  # checkpoints older than gauss_params (splatfacto's remapping)
            for name in self.gauss_params:
                state_dict[f"gauss_params.{name}"] = state_dict.pop(name)
        n = state_dict["gauss_params.means"].shape[0]
        for param in self.gauss_params.values():
            param.data = torch.zeros((n,) + tuple(param.shape[1:]), dtype=param.dtype, device=param.device)
        self.step = 30000  # as splatfacto: a loaded model renders every SH band (training resets it)
        torch.nn.Module.load_state_dict(self, state_dict, **kwargs)

    def gaussian_params(self) -> Dict[str, Tensor]:
        """The Gaussians to render, splatfacto's parameterisation (log scales, logit
        opacities [N, 1], SH DC [N, 3], SH rest [N, K - 1, 3], wxyz quats)."""
        return dict(self.gauss_params.items())

    def sh_degree_to_use(self) -> Optional[int]:
        """SH degree to render with: splatfacto's ramp (one more band every
        `sh_degree_interval` steps), or None when sh_degree is 0 and features_dc holds logit
        RGB instead of SH (splatfacto's colour-only mode)."""
        if self.config.sh_degree == 0:
            return None
        return min(self.step // self.config.sh_degree_interval, self.config.sh_degree)

    def get_outputs(self, camera: Cameras) -> Dict[str, Union[torch.Tensor, List]]:
        """Renders one camera, as splatfacto does, through `neuralgs_ns.render.rasterize`.

        Returns:
            rgb [H, W, 3] composited on the background, depth [H, W, 1] (expected depth;
            None while training unless `output_depth_during_training`), accumulation
            [H, W, 1], and the background colour ([3] in training, [H, W, 3] otherwise).
        """
        if not isinstance(camera, Cameras):
            CONSOLE.print("Called get_outputs with not a camera")
            return {}

        if self.training:
            assert camera.shape[0] == 1, "Only one camera at a time"
            optimized_camera_to_world = self.camera_optimizer.apply_to_camera(camera)
        else:
            optimized_camera_to_world = camera.camera_to_worlds

        crop_ids = None
        if self.crop_box is not None and not self.training:
            crop_ids = self.crop_box.within(self.means).squeeze()
            if crop_ids.sum() == 0:
                return self.get_empty_outputs(
                    int(camera.width.item()), int(camera.height.item()), self.background_color.to(self.device)
                )
        params = {name: p if crop_ids is None else p[crop_ids] for name, p in self.gaussian_params().items()}
        colors = torch.cat((params["features_dc"][:, None, :], params["features_rest"]), dim=1)

        camera_scale_fac = self._get_downscale_factor()
        camera.rescale_output_resolution(1 / camera_scale_fac)
        viewmat = get_viewmat(optimized_camera_to_world)
        K = camera.get_intrinsics_matrices().to(self.device)
        W, H = int(camera.width.item()), int(camera.height.item())
        self.last_size = (H, W)
        camera.rescale_output_resolution(camera_scale_fac)  # type: ignore

        if self.config.rasterize_mode not in ["antialiased", "classic"]:
            raise ValueError(f"Unknown rasterize_mode: {self.config.rasterize_mode}")
        render_mode = "RGB+ED" if self.config.output_depth_during_training or not self.training else "RGB"

        sh_degree_to_use = self.sh_degree_to_use()
        if sh_degree_to_use is None:
            colors = torch.sigmoid(colors).squeeze(1)  # [N, 1, 3] -> [N, 3]

        render, alpha, self.info = rasterize(
            means=params["means"],
            quats=params["quats"],  # rasterize normalises them
            scales=torch.exp(params["scales"]),
            opacities=torch.sigmoid(params["opacities"]).squeeze(-1),
            colors=colors,
            viewmats=viewmat,  # [1, 4, 4]
            Ks=K,  # [1, 3, 3]
            width=W,
            height=H,
            near_plane=0.01,
            far_plane=1e10,
            sh_degree=sh_degree_to_use,
            render_mode=render_mode,
            rasterize_mode=self.config.rasterize_mode,
            absgrad=self.strategy is not None and self.strategy.absgrad,
        )
        if self.training and self.strategy is not None:
            self.strategy.step_pre_backward(
                self.gauss_params, self.optimizers, self.strategy_state, self.step, self.info
            )

        background = self._get_background_color()
        rgb = torch.clamp(render[..., :3] + (1 - alpha) * background, 0.0, 1.0)

        if self.config.use_bilateral_grid and self.training:
            if camera.metadata is not None and "cam_idx" in camera.metadata:
                rgb = self._apply_bilateral_grid(rgb, camera.metadata["cam_idx"], H, W)

        depth_im = None
        if render_mode == "RGB+ED":
            depth_im = render[..., 3:4]
            # Empty pixels get the farthest depth rendered rather than 0.
            depth_im = torch.where(alpha > 0, depth_im, depth_im.detach().max()).squeeze(0)

        if background.shape[0] == 3 and not self.training:
            background = background.expand(H, W, 3)

        return {
            "rgb": rgb.squeeze(0),  # type: ignore
            "depth": depth_im,  # type: ignore
            "accumulation": alpha.squeeze(0),  # type: ignore
            "background": background,  # type: ignore
        }

    def get_image_metrics_and_images(
        self, outputs: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, torch.Tensor]]:
        """Splatfacto's evaluation metrics (psnr, ssim, lpips; cc_* with colour correction) and
        the side-by-side image; lpips and cc_lpips are left out when LPIPS is unavailable."""
        gt_rgb = self.composite_with_background(self.get_gt_img(batch["image"]), outputs["background"])
        predicted_rgb = outputs["rgb"]
        combined_rgb = torch.cat([gt_rgb, predicted_rgb], dim=1)

        # [H, W, C] -> [1, C, H, W] for the metrics.
        def to_nchw(image: Tensor) -> Tensor:
            return torch.moveaxis(image, -1, 0)[None, ...]

        candidates = {"": to_nchw(predicted_rgb)}
        if self.config.color_corrected_metrics:
            candidates["cc_"] = to_nchw(color_correct(predicted_rgb, gt_rgb))
        gt_rgb = to_nchw(gt_rgb)

        lpips = load_lpips()
        if lpips is not None:
            lpips = lpips.to(self.device)
        metrics_dict: Dict[str, float] = {}
        for prefix, rgb in candidates.items():
            metrics_dict[f"{prefix}psnr"] = float(self.psnr(gt_rgb, rgb).item())
            metrics_dict[f"{prefix}ssim"] = float(self.ssim(gt_rgb, rgb))
            if lpips is not None:
                metrics_dict[f"{prefix}lpips"] = float(lpips(gt_rgb, rgb))
        return metrics_dict, {"img": combined_rgb}

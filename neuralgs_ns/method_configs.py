"""nerfstudio method specifications, registered through the `nerfstudio.method_configs` entry
points: `splatfacto-portable` and `neuralgs`.

Both mirror nerfstudio's `splatfacto` method (same optimisers, schedules, datamanager and step
counts) and train on CUDA when it is available, on the CPU otherwise.
"""

from __future__ import annotations

from typing import Type

import torch

from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanagerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.models.base_model import ModelConfig
from nerfstudio.plugins.types import MethodSpecification

from neuralgs_ns.models.neuralgs import PRESETS, NeuralGSModelConfig, resolve_preset
from neuralgs_ns.models.portable_splatfacto import PortableSplatfactoModelConfig
from neuralgs_ns.pipeline import NeuralGSPipelineConfig, NeuralGSTrainerConfig, PortableSplatfactoPipelineConfig


def _splatfacto_optimizers() -> dict:
    """nerfstudio's splatfacto optimisers and schedulers, one per parameter group."""
    return {
        "means": {
            "optimizer": AdamOptimizerConfig(lr=1.6e-4, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=1.6e-6, max_steps=30000),
        },
        "features_dc": {"optimizer": AdamOptimizerConfig(lr=0.0025, eps=1e-15), "scheduler": None},
        "features_rest": {"optimizer": AdamOptimizerConfig(lr=0.0025 / 20, eps=1e-15), "scheduler": None},
        "opacities": {"optimizer": AdamOptimizerConfig(lr=0.05, eps=1e-15), "scheduler": None},
        "scales": {"optimizer": AdamOptimizerConfig(lr=0.005, eps=1e-15), "scheduler": None},
        "quats": {"optimizer": AdamOptimizerConfig(lr=0.001, eps=1e-15), "scheduler": None},
        "camera_opt": {
            "optimizer": AdamOptimizerConfig(lr=1e-4, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(
                lr_final=5e-7, max_steps=30000, warmup_steps=1000, lr_pre_warmup=0
            ),
        },
        "bilateral_grid": {
            "optimizer": AdamOptimizerConfig(lr=2e-3, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(
                lr_final=1e-4, max_steps=30000, warmup_steps=1000, lr_pre_warmup=0
            ),
        },
    }


def _splatfacto_trainer(method_name: str, model: ModelConfig, trainer: Type[TrainerConfig] = TrainerConfig
                        ) -> TrainerConfig:
    """nerfstudio's `splatfacto` TrainerConfig with `model`, on CUDA if present, else the CPU."""
    return trainer(
        method_name=method_name,
        steps_per_eval_image=100,
        steps_per_eval_batch=0,
        steps_per_save=2000,
        steps_per_eval_all_images=1000,
        max_num_iterations=30000,
        mixed_precision=False,
        machine=MachineConfig(device_type="cuda" if torch.cuda.is_available() else "cpu"),
        pipeline=PortableSplatfactoPipelineConfig(
            datamanager=FullImageDatamanagerConfig(
                dataparser=NerfstudioDataParserConfig(load_3D_points=True),
                cache_images_type="uint8",
                # "gpu" caches on the training device, whichever it is; "cpu" would pin the
                # cache in page-locked memory, which needs CUDA.
                cache_images="gpu",
            ),
            model=model,
        ),
        optimizers=_splatfacto_optimizers(),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    )


splatfacto_portable = MethodSpecification(
    config=_splatfacto_trainer("splatfacto-portable", PortableSplatfactoModelConfig()),
    description="Splatfacto that also trains on CPU (no CUDA needed); same checkpoints as splatfacto.",
)

def neuralgs_trainer(preset: str = "auto") -> TrainerConfig:
    """`neuralgs`: splatfacto's data handling; stage D's length from the preset (the paper's
    25k steps on CUDA, 1.5k on CPU with `auto`); only the MLPs (and camera_opt) optimise."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = _splatfacto_trainer("neuralgs", NeuralGSModelConfig(preset=preset), trainer=NeuralGSTrainerConfig)
    config.pipeline = NeuralGSPipelineConfig(datamanager=config.pipeline.datamanager, model=config.pipeline.model)
    settings = PRESETS[resolve_preset(preset, device)]
    config.optimizers = {
        # The paper gives no fine-tuning learning rate: 1e-3 suits the fitted tanh MLPs (3e-3
        # spikes early with 5k-Gaussian clusters, 1e-2 diverges on lego), decaying to the
        # preset's final rate: the cpu preset averages its last steps' weights, which gains
        # most where those steps still move (docs/tuning.md#the-fine-tuning-learning-rate);
        # the paper preset ends on its last step. No single rate suits every scene:
        # lego-200 needs steps this large, while where the stage C fit is already close they
        # can undo it. The model's guard (`compress.guard`) restarts a run whose loss blows
        # up, or has not come back under the stage C fit's by step 100, from that fit at a
        # tenth of the rate.
        "field": {
            "optimizer": AdamOptimizerConfig(lr=1e-3, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=settings["fine_tune_lr_final"]),
        },
        # The per-Gaussian corrections (--pipeline.model.residual-attributes), in normalised
        # attribute units: about splatfacto's opacity rate (0.05 on logits spanning ~20).
        "residuals": {
            "optimizer": AdamOptimizerConfig(lr=2e-3, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=2e-4),
        },
        "camera_opt": _splatfacto_optimizers()["camera_opt"],
    }
    set_fine_tune_iterations(config, settings["fine_tune_iterations"])
    return config


def set_fine_tune_iterations(config: TrainerConfig, iterations: int) -> None:
    """Stage D's length: the training steps, the learning-rate decay over them, and one
    checkpoint and one full evaluation at the end."""
    config.max_num_iterations = config.steps_per_save = config.steps_per_eval_all_images = iterations
    for group in ("field", "residuals"):
        config.optimizers[group]["scheduler"].max_steps = iterations


neuralgs = MethodSpecification(
    config=neuralgs_trainer(),
    description="NeuralGS: compress a trained splatfacto scene into clustered neural fields.",
)

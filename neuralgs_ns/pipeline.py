"""The pipelines: splatfacto-portable's (nerfstudio's VanillaPipeline that checks the
background against the dataset), and NeuralGS's, which compresses the teacher (stages A-C)
once the training views are loaded and before the trainer builds its optimisers, with the
trainer that resumes a run from its checkpoint instead of compressing again.

With several processes (nerfstudio's launcher, `--machine.num-devices`, or
`neuralgs compress --num-devices`), rank 0 alone runs stages A-C and sends the result to the
others; stage D is then data parallel: each rank renders its own training views and
DistributedDataParallel averages the gradients."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Type

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor


def painted_background_warning(alpha_color: Optional[Tensor], background_color: str) -> Optional[str]:
    """Why training would paint the background, or None. A dataparser that composites RGBA
    images on `alpha_color` (blender-data: white) hands the model opaque images; against a
    random `background_color` the model can only match their background colour with opaque
    Gaussians, a shell that blocks the views of cameras the training set lacks
    (docs/results/size-rule.md has lego-200's)."""
    if alpha_color is None or background_color != "random":
        return None
    named = {(1.0, 1.0, 1.0): "white", (0.0, 0.0, 0.0): "black"}.get(tuple(float(c) for c in alpha_color))
    fix = f"--pipeline.model.background-color {named}" if named else "a background of that colour"
    return (f"the training images come composited on {named or alpha_color.tolist()} (the dataparser's alpha "
            f"colour) while the background is random: the model will paint it with opaque Gaussians that block "
            f"views the training cameras lack. Train with {fix}, or keep the alpha channel (blender-data "
            f"--alpha-color None)")


@dataclass
class PortableSplatfactoPipelineConfig(VanillaPipelineConfig):
    _target: Type = field(default_factory=lambda: PortableSplatfactoPipeline)


class PortableSplatfactoPipeline(VanillaPipeline):
    """splatfacto-portable's pipeline: VanillaPipeline, warning once when built for training
    if the dataset's images would make the model paint its background
    (`painted_background_warning`)."""

    def __init__(self, config: VanillaPipelineConfig, device: str, test_mode: Literal["test", "val", "inference"] = "val",
                 world_size: int = 1, local_rank: int = 0, grad_scaler: Optional[torch.cuda.amp.GradScaler] = None):
        super().__init__(config, device, test_mode=test_mode, world_size=world_size, local_rank=local_rank,
                         grad_scaler=grad_scaler)
        if test_mode != "val" or local_rank != 0:
            return
        message = painted_background_warning(self.datamanager.train_dataparser_outputs.alpha_color,
                                             self.model.config.background_color)
        if message is not None:
            CONSOLE.log(f"[bold yellow]Warning: {message}")


@dataclass
class NeuralGSPipelineConfig(VanillaPipelineConfig):
    _target: Type = field(default_factory=lambda: NeuralGSPipeline)
    resume_checkpoint: Optional[Path] = None
    """Set by `NeuralGSTrainer` when resuming (--load-dir / --load-checkpoint): the compressed
    scene is restored from this checkpoint instead of compressing the teacher again."""


class NeuralGSPipeline(VanillaPipeline):
    """Runs `NeuralGSModel.compress_teacher` when built for training ("val" mode). Loading a
    run for the viewer, ns-eval or ns-export ("test"/"inference") restores the compressed
    scene from the checkpoint instead and needs no teacher."""

    def __init__(self, config: NeuralGSPipelineConfig, device: str, test_mode: Literal["test", "val", "inference"] = "val",
                 world_size: int = 1, local_rank: int = 0, grad_scaler: Optional[torch.cuda.amp.GradScaler] = None):
        # VanillaPipeline would wrap the model in DDP here, before stages A-C replace its
        # parameters; this pipeline wraps it itself once they exist.
        super().__init__(config, device, test_mode=test_mode, world_size=1, local_rank=local_rank,
                         grad_scaler=grad_scaler)
        if test_mode != "val":
            return
        rank = dist.get_rank() if world_size > 1 else 0
        if config.resume_checkpoint is not None:
            # The MLPs must exist at the checkpoint's sizes before the trainer builds its
            # optimisers; the trainer then loads the same state again along with theirs.
            state = torch.load(config.resume_checkpoint, map_location="cpu", weights_only=False)["pipeline"]
            prefix = "_model."
            self.model.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        elif rank == 0:
            self.model.compress_teacher(self.datamanager)
        if world_size > 1:
            self._share_compressed_scene(rank)
            self._shard_training_views(rank, world_size)
            on_cuda = str(device).startswith("cuda")
            self._model = DDP(self._model, device_ids=[local_rank] if on_cuda else None, find_unused_parameters=True)

    def state_dict(self, *args, **kwargs):
        # A data-parallel run's checkpoint reads like a single process's (no DDP "module.").
        state = super().state_dict(*args, **kwargs)
        return type(state)((k.replace("_model.module.", "_model.", 1), v) for k, v in state.items())

    def _shard_training_views(self, rank: int, world_size: int) -> None:
        """Each rank trains on its own share of every shuffle of the training views (nerfstudio's
        full-image datamanager draws the same sequence on every rank: one seed for all)."""
        datamanager = self.datamanager
        if not hasattr(datamanager, "sample_train_cameras"):
            return
        shuffle = datamanager.sample_train_cameras  # same seed on every rank: the same shuffles

        def my_share():
            views = shuffle()
            return views[rank::world_size] or views[:1]

        datamanager.sample_train_cameras = my_share
        datamanager.train_unseen_cameras = my_share()

    def _share_compressed_scene(self, rank: int) -> None:
        """Rank 0's stages A-C result (the model's state and the fine-tune guard) on every rank."""
        model = self.model
        payload = [None]
        if rank == 0:
            payload = [{"state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                        "guard": model.guard, "snapshot": model.guard_snapshot_cpu(),
                        "stage_seconds": model.stage_seconds}]
        dist.broadcast_object_list(payload, src=0)
        if rank != 0:
            shared = payload[0]
            model.load_state_dict(shared["state"])
            model.guard, model.stage_seconds = shared["guard"], shared["stage_seconds"]
            model.restore_guard_snapshot(shared["snapshot"])


@dataclass
class NeuralGSTrainerConfig(TrainerConfig):
    _target: Type = field(default_factory=lambda: NeuralGSTrainer)


class NeuralGSTrainer(Trainer):
    """nerfstudio's trainer, telling the pipeline which checkpoint a resumed run will load, so
    stages A-C are not rerun (minutes of work the checkpoint already holds)."""

    config: NeuralGSTrainerConfig

    def setup(self, test_mode: Literal["test", "val", "inference"] = "val") -> None:
        self.config.pipeline.resume_checkpoint = self._checkpoint_to_load()
        super().setup(test_mode=test_mode)

    def _checkpoint_to_load(self) -> Optional[Path]:
        """The file `Trainer._load_checkpoint` will load (same rules), or None."""
        config = self.config
        if config.load_dir is not None:
            step = config.load_step
            if step is None:
                names = [n for n in os.listdir(config.load_dir) if n.startswith("step-") and n.endswith(".ckpt")]
                if not names:
                    return None  # the trainer reports the missing checkpoint itself
                step = max(int(n[len("step-"):-len(".ckpt")]) for n in names)
            path = Path(config.load_dir) / f"step-{step:09d}.ckpt"
            return path if path.exists() else None
        if config.load_checkpoint is not None and Path(config.load_checkpoint).exists():
            return Path(config.load_checkpoint)
        return None

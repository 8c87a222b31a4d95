"""The NeuralGS pipeline: nerfstudio's VanillaPipeline that compresses the teacher (stages
A-C) once the training views are loaded and before the trainer builds its optimisers, and
the trainer that resumes a run from its checkpoint instead of compressing again."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Type

import torch

from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig


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
        super().__init__(config, device, test_mode=test_mode, world_size=world_size, local_rank=local_rank,
                         grad_scaler=grad_scaler)
        if test_mode != "val":
            return
        if config.resume_checkpoint is not None:
            # The MLPs must exist at the checkpoint's sizes before the trainer builds its
            # optimisers; the trainer then loads the same state again along with theirs.
            state = torch.load(config.resume_checkpoint, map_location="cpu", weights_only=False)["pipeline"]
            prefix = "_model."
            self.model.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        else:
            self.model.compress_teacher(self.datamanager)


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

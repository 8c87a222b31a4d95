"""The NeuralGS pipeline: nerfstudio's VanillaPipeline that compresses the teacher (stages
A-C) once the training views are loaded and before the trainer builds its optimisers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Type

import torch

from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig


@dataclass
class NeuralGSPipelineConfig(VanillaPipelineConfig):
    _target: Type = field(default_factory=lambda: NeuralGSPipeline)


class NeuralGSPipeline(VanillaPipeline):
    """Runs `NeuralGSModel.compress_teacher` when built for training ("val" mode). Loading a
    run for the viewer, ns-eval or ns-export ("test"/"inference") restores the compressed
    scene from the checkpoint instead and needs no teacher."""

    def __init__(self, config: NeuralGSPipelineConfig, device: str, test_mode: Literal["test", "val", "inference"] = "val",
                 world_size: int = 1, local_rank: int = 0, grad_scaler: Optional[torch.cuda.amp.GradScaler] = None):
        super().__init__(config, device, test_mode=test_mode, world_size=world_size, local_rank=local_rank,
                         grad_scaler=grad_scaler)
        if test_mode == "val":
            self.model.compress_teacher(self.datamanager)

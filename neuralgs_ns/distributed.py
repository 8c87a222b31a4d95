"""Data-parallel NeuralGS on several processes: `neuralgs compress --num-devices N`.

nerfstudio's own launcher (`ns-train neuralgs --machine.num-devices N`) is the way on GPUs;
it refuses to start without CUDA. This launcher runs the same per-process loop (nerfstudio's
`train_loop`) over torch.distributed on either device: NCCL on GPUs, gloo on CPU (where the
cores are shared out between the processes). `NeuralGSPipeline` does the rest: rank 0 runs
stages A-C and sends them to the others, DistributedDataParallel averages the gradients of
stage D, rank 0 writes the checkpoint and the file.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

STAGES_TIMEOUT = timedelta(hours=4)
"""How long the other ranks wait for rank 0's stages A-C (nerfstudio's 30 minutes is too
short for a large scene on a CPU)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_data_parallel(config, num_devices: int, after_training: Optional[Callable] = None,
                      dist_url: str = "auto") -> None:
    """Trains `config` (a TrainerConfig) in `num_devices` processes on this machine.
    `after_training(rank, trainer)`, a module-level function, runs in every process after
    the last step (e.g. to report what the process holds)."""
    if num_devices < 2:
        raise ValueError(f"run_data_parallel needs 2 or more devices, got {num_devices}")
    if config.machine.device_type == "cuda" and torch.cuda.device_count() < num_devices:
        from neuralgs_ns.errors import NeuralGSError

        raise NeuralGSError(f"--num-devices {num_devices}: only {torch.cuda.device_count()} CUDA devices are visible")
    if dist_url == "auto":
        dist_url = f"tcp://127.0.0.1:{free_port()}"
    config.machine.num_devices = num_devices
    mp.spawn(_worker, nprocs=num_devices, join=True, args=(num_devices, dist_url, config, after_training))


def _worker(rank: int, world_size: int, dist_url: str, config, after_training: Optional[Callable]) -> None:
    from nerfstudio.scripts.train import _set_random_seed
    from nerfstudio.utils import comms

    on_cuda = config.machine.device_type == "cuda"
    if on_cuda:
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    dist.init_process_group("nccl" if on_cuda else "gloo", init_method=dist_url, world_size=world_size, rank=rank,
                            timeout=STAGES_TIMEOUT)
    comms.LOCAL_PROCESS_GROUP = dist.new_group(list(range(world_size)))
    try:
        # nerfstudio's train_loop, keeping hold of the trainer.
        _set_random_seed(config.machine.seed + rank)
        trainer = config.setup(local_rank=rank, world_size=world_size)
        trainer.setup()
        trainer.train()
        if after_training is not None:
            after_training(rank, trainer)
        comms.synchronize()
    finally:
        dist.destroy_process_group()

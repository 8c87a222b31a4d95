"""splatfacto checkpoints: a .ckpt file, a nerfstudio run directory or that run's config.yml."""

from __future__ import annotations

from pathlib import Path

import torch

from neuralgs_ns.errors import InputFileError
from neuralgs_ns.gaussians import PARAM_NAMES, SH_C0, SPLATFACTO_PREFIX, Gaussians


def find_checkpoint(path: Path) -> Path:
    """The checkpoint a user means by PATH: a .ckpt file, a run directory (its latest
    nerfstudio_models/step-*.ckpt) or that run's config.yml."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "no such file or directory")
    if path.is_file() and path.suffix == ".ckpt":
        return path
    run_dir = path.parent if path.is_file() and path.suffix in (".yml", ".yaml") else path
    if not run_dir.is_dir():
        raise InputFileError(path, "expected a .ckpt, a .ply, a nerfstudio run directory or its config.yml")
    ckpts = sorted((run_dir / "nerfstudio_models").glob("step-*.ckpt"), key=lambda p: int(p.stem.split("-")[1]))
    if not ckpts:
        raise InputFileError(path, f"no checkpoint found in {run_dir / 'nerfstudio_models'}")
    return ckpts[-1]


def read_splatfacto_checkpoint(path: Path) -> Gaussians:
    """Gaussians of a splatfacto (or splatfacto-portable / neuralgs) checkpoint."""
    path = Path(path)
    try:
        # weights_only=False only on the file the user named: nerfstudio checkpoints hold
        # optimizer and scheduler state that the safe loader refuses.
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or not a torch file at all
        raise InputFileError(path, f"not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from None
    state = ckpt.get("pipeline") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise InputFileError(path, "not a nerfstudio checkpoint (no 'pipeline' state)")
    missing = [n for n in PARAM_NAMES if SPLATFACTO_PREFIX + n not in state]
    if missing:
        raise InputFileError(path, "not a Gaussian-splatting checkpoint (no "
                             f"{SPLATFACTO_PREFIX}{missing[0]}; splatfacto runs have one, nerfacto runs don't)")
    params = {n: state[SPLATFACTO_PREFIX + n].detach().float() for n in PARAM_NAMES}
    if params["opacities"].dim() == 1:
        params["opacities"] = params["opacities"][:, None]
    if params["features_rest"].dim() == 3 and params["features_rest"].shape[1] == 0:
        # splatfacto with sh_degree 0 keeps logit RGB in features_dc, not an SH coefficient.
        params["features_dc"] = (torch.sigmoid(params["features_dc"]) - 0.5) / SH_C0
    try:
        return Gaussians(**params)
    except ValueError as err:
        raise InputFileError(path, str(err)) from None


def read_checkpoint(path: Path) -> Gaussians:
    """Gaussians of the checkpoint that PATH (a .ckpt, run directory or config.yml) means."""
    return read_splatfacto_checkpoint(find_checkpoint(path))

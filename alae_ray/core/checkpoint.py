"""Checkpoints: a directory of plain tensors plus JSON, loaded without executing code.

Layout of a checkpoint directory::

    state.safetensors   every tensor (networks, EMA, optimizer moments, RNG states)
    config.json         the resolved Config
    progress.json       images seen, iteration, level, and anything the caller adds

A directory is written under a temporary name and renamed into place, so a crash never leaves a
half-written checkpoint behind a final name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import Config, ConfigError, from_dict
from .model import ALAE

STATE_FILE = "state.safetensors"
CONFIG_FILE = "config.json"
PROGRESS_FILE = "progress.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or does not match its config; the message names it."""


def write_checkpoint(directory: str | Path, cfg: Config, tensors: dict[str, torch.Tensor], progress: dict) -> Path:
    """Write atomically: fill a sibling temporary directory, then rename it to ``directory``."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / STATE_FILE))
        (tmp / CONFIG_FILE).write_text(cfg.to_json())
        (tmp / PROGRESS_FILE).write_text(json.dumps(progress, indent=2, sort_keys=True))
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> tuple[Config, dict[str, torch.Tensor], dict]:
    directory = Path(directory)
    for name in (STATE_FILE, CONFIG_FILE, PROGRESS_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f"checkpoint {str(directory)!r} is incomplete: {name} is missing")
    try:
        cfg = from_dict(json.loads((directory / CONFIG_FILE).read_text()))
    except (json.JSONDecodeError, ConfigError) as exc:
        raise CheckpointError(f"checkpoint {str(directory)!r}: bad {CONFIG_FILE}: {exc}") from None
    try:
        tensors = load_file(str(directory / STATE_FILE), device=str(device))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"checkpoint {str(directory)!r}: unreadable {STATE_FILE}: {exc}") from None
    progress = json.loads((directory / PROGRESS_FILE).read_text())
    return cfg, tensors, progress


def load_model(directory: str | Path, *, ema: bool = True, device: str | torch.device = "cpu") -> tuple[ALAE, Config, dict]:
    """An inference model (the EMA copy by default) from a checkpoint directory."""
    cfg, tensors, progress = read_checkpoint(directory, device)
    prefix = "ema." if ema and any(k.startswith("ema.") for k in tensors) else "model."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    model = ALAE(cfg.model)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"checkpoint {str(directory)!r} does not match its config "
                              f"({cfg.name}): {' '.join(first[:3])}") from None
    return model.to(device).eval().requires_grad_(False), cfg, progress

"""Checkpoints: a directory of plain tensors plus JSON, loaded without executing code.

Layout of a checkpoint directory::

    state.safetensors   every tensor (networks, EMA, optimizer moments, RNG states)
    config.json         the resolved Config
    progress.json       images seen, iteration, level, and anything the caller adds

A directory is written under a temporary name and renamed into place, so a crash never leaves a
half-written checkpoint behind a final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .config import Config, ConfigError, from_dict
from .model import ALAE

STATE_FILE = "state.safetensors"
CONFIG_FILE = "config.json"
PROGRESS_FILE = "progress.json"
# 2: the authors' networks (tests/integration/test_authors_reference.py). Format 1 networks cannot be loaded.
FORMAT = 2


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or does not match its config; the message names it."""


@contextmanager
def atomic_directory(directory: str | Path) -> Iterator[Path]:
    """Yield a sibling temporary directory to fill; on success it replaces ``directory`` (rename), on
    failure it is removed and ``directory`` stays as it was."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would outlive the rename
    try:
        yield tmp
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


def write_checkpoint(directory: str | Path, cfg: Config, tensors: dict[str, torch.Tensor], progress: dict) -> Path:
    """Write atomically: fill a sibling temporary directory, then rename it to ``directory``."""
    with atomic_directory(directory) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / STATE_FILE))
        (tmp / CONFIG_FILE).write_text(cfg.to_json())
        (tmp / PROGRESS_FILE).write_text(json.dumps({**progress, "format": FORMAT}, indent=2, sort_keys=True))
    return Path(directory)


def read_checkpoint(directory: str | Path, device: str | torch.device = "cpu",
                    prefixes: tuple[str, ...] | None = None) -> tuple[Config, dict[str, torch.Tensor], dict]:
    """(config, tensors, progress); ``prefixes`` reads only the tensors whose names start so (the
    file is read lazily: an inference model does not load optimizer moments)."""
    directory = Path(directory)
    for name in (STATE_FILE, CONFIG_FILE, PROGRESS_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f"checkpoint {str(directory)!r} is incomplete: {name} is missing")
    try:
        cfg = from_dict(json.loads((directory / CONFIG_FILE).read_text()))
    except (json.JSONDecodeError, ConfigError) as exc:
        raise CheckpointError(f"checkpoint {str(directory)!r}: bad {CONFIG_FILE}: {exc}") from None
    try:
        if prefixes is None:
            tensors = load_file(str(directory / STATE_FILE), device=str(device))
        else:
            with safe_open(str(directory / STATE_FILE), "pt", device=str(device)) as f:
                tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefixes)}
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"checkpoint {str(directory)!r}: unreadable {STATE_FILE}: {exc}") from None
    try:
        progress = json.loads((directory / PROGRESS_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {str(directory)!r}: unreadable {PROGRESS_FILE}: {exc}") from None
    if not isinstance(progress, dict):
        raise CheckpointError(f"checkpoint {str(directory)!r}: {PROGRESS_FILE} is not a JSON object")
    return cfg, tensors, progress


TRAINING_STATE = ("model.", "ema.", "opt_ED.", "opt_FG.")


def state_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the training state (networks, EMA, optimizer moments: not RNG states or samples),
    name, dtype, shape and bytes: equal digests, equal states, bit for bit."""
    h = hashlib.sha256()
    for name in sorted(k for k in tensors if k.startswith(TRAINING_STATE)):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_networks(directory: str | Path, *, ema: bool = True,
                  device: str | torch.device = "cpu") -> tuple[Config, dict[str, torch.Tensor], dict]:
    """(config, one copy of the networks as a state dict, progress), reading no other tensor: the EMA
    copy (by default; the training networks where a checkpoint has no EMA copy) or the training networks."""
    for prefix in ("ema.", "model.") if ema else ("model.",):
        cfg, tensors, progress = read_checkpoint(directory, device, prefixes=(prefix,))
        if tensors:
            break
    return cfg, {k[len(prefix):]: v for k, v in tensors.items()}, progress


def load_model(directory: str | Path, *, ema: bool = True, device: str | torch.device = "cpu") -> tuple[ALAE, Config, dict]:
    """An inference model (the EMA copy by default) from a checkpoint directory; only its tensors are read."""
    cfg, state, progress = read_networks(directory, ema=ema, device=device)
    model = ALAE(cfg.model)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        if progress.get("format", 1) < FORMAT:
            raise CheckpointError(f"checkpoint {str(directory)!r} was written by an alae-ray version whose networks "
                                  f"differ from the authors' (format {progress.get('format', 1)}); it cannot be "
                                  f"loaded by this version (format {FORMAT}): train again or import the authors' "
                                  f"models (alae-ray import-authors)") from None
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"checkpoint {str(directory)!r} does not match its config "
                              f"({cfg.name}): {' '.join(first[:3])}") from None
    return model.to(device).eval().requires_grad_(False), cfg, progress


def is_checkpoint(directory: str | Path) -> bool:
    return all((Path(directory) / name).is_file() for name in (STATE_FILE, CONFIG_FILE, PROGRESS_FILE))

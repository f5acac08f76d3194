"""A checkpoint for the metrics (an ``alae_ray.api.Model``), and how their work is cut and drawn.

Everything here is deterministic given (seed, first sample index): sample i's latent comes from a
generator seeded by the chunk it belongs to, so a single process and N Ray workers that cut the
same chunks draw exactly the same latents.
"""

from __future__ import annotations

import torch

from ..api import Model, load


def open_model(checkpoint: str, *, level: int | None = None, ema: bool = True,
               device: str | torch.device = "cpu") -> Model:
    """Load a checkpoint or run directory (``file://`` prefix allowed) for evaluation.

    ``level`` defaults to the level the run reached (``progress.json``), else the top level.
    """
    model = load(checkpoint.removeprefix("file://"), ema=ema, device=device)
    if level is None and model.progress.get("level") is not None:
        level = int(model.progress["level"])
    if level is None or level == model.level:
        return model
    return Model(model.network, model.cfg, model.progress, level=level, name=model.name)


def chunk_latents(seed: int, start: int, count: int, latent_size: int) -> torch.Tensor:
    """z [count, L] for samples start..start+count-1 (float32, CPU), independent of who draws them."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + start) % (2**63))
    return torch.randn(count, latent_size, generator=gen)


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """(start, count) pairs cutting 0..n-1 into pieces of ``size`` (the last may be shorter)."""
    return [(s, min(size, n - s)) for s in range(0, n, size)]

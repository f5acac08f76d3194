"""The progressive schedule: a pure function of images seen.

Level ``l`` trains at resolution ``4 * 2**l`` for ``fade_kimg + stable_kimg``: every level but the
first fades in over its first ``fade_kimg`` (alpha 0 -> 1); the first trains the whole length at
alpha 1 (the authors' code; each of their levels lasts EPOCHS_PER_LOD epochs). The top level trains
``final_kimg`` more and then stays there. Resume is "restore the counters and
ask the schedule where we are"; nothing here depends on the number of workers, and how they share
each global batch (``split_streams``) is a pure function too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import Config, ConfigError


@dataclass(frozen=True)
class Stage:
    level: int  # Resolution level (0 = 4x4).
    resolution: int  # 4 * 2**level.
    alpha: float  # Fade-in weight of the newest level (1 = fully in).
    batch: int  # Global batch across all workers.
    lr: float  # Learning rate for both optimizers.
    level_start_kimg: float  # Images (thousands) seen when this level began.
    level_end_kimg: float  # Images (thousands) when the next level begins (inf at the top).


def _ramp(t: float, kind: str) -> float:
    t = min(max(t, 0.0), 1.0)
    return 0.5 - 0.5 * math.cos(math.pi * t) if kind == "sine" else t


def level_spans(cfg: Config) -> list[tuple[int, float, float]]:
    """(level, start_kimg, end_kimg) for every level the run visits; the last ends at inf."""
    s, m = cfg.schedule, cfg.model
    first = 0 if m.kind == "mlp" else m.level_of(s.start_resolution)
    spans, start = [], 0.0
    for level in range(first, m.num_levels):
        length = s.fade_kimg + s.stable_kimg
        end = math.inf if level == m.num_levels - 1 else start + length
        spans.append((level, start, end))
        start = end
    return spans


def total_kimg(cfg: Config) -> float:
    """Length of the full schedule: every level, then final_kimg at the top."""
    s = cfg.schedule
    return len(level_spans(cfg)) * (s.fade_kimg + s.stable_kimg) + s.final_kimg


def stage_at(cfg: Config, kimg: float) -> Stage:
    """Where the schedule is after ``kimg`` thousand images."""
    if kimg < 0:
        raise ConfigError(f"images seen must be >= 0, got {kimg}")
    s, m = cfg.schedule, cfg.model
    spans = level_spans(cfg)
    for i, (level, start, end) in enumerate(spans):
        if kimg < end:
            break
    fading = i > 0 and s.fade_kimg > 0
    alpha = _ramp((kimg - start) / s.fade_kimg, s.fade) if fading else 1.0
    res = m.resolution(level) if m.kind == "style" else s.start_resolution
    return Stage(level=level, resolution=res, alpha=alpha, batch=int(s.table("batch", res)),
                 lr=float(s.table("lr", res)), level_start_kimg=start, level_end_kimg=end)


def split_streams(streams: int, rank: int, world: int) -> range:
    """The data streams worker ``rank`` of ``world`` serves: [rank*V//W, (rank+1)*V//W) of V, a
    contiguous share, as equal as W allows. Worker r's part of every global batch is those streams'
    rows, so the batches do not depend on W, and any W up to V splits them."""
    if not 0 <= rank < world <= streams:
        raise ConfigError(f"{world} workers cannot share {streams} data streams: at most one worker per stream "
                          f"(--data-streams sets them)" if world > streams >= 1 else
                          f"no worker {rank} of {world} serving {streams} data streams")
    return range(rank * streams // world, (rank + 1) * streams // world)

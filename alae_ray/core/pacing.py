"""When a run checkpoints: a pure rule on images seen, the same answer on every worker."""

from __future__ import annotations

import math

AUTO_MIN_KIMG = 2.0  # automatic pacing never checkpoints more often than this
AUTO_BUDGET = 0.02  # ... nor lets checkpoints stop training for more than this share of its time


class CheckpointPacer:
    """When checkpoints fall due, in images seen (the same answer on every worker).

    A fixed interval (``--checkpoint-kimg``) checkpoints exactly every ``every`` images. Automatic
    pacing (``budget`` set) starts at that interval and, after each checkpoint, moves the next one
    on far enough that the time training stood still for it stays under ``budget`` of the time
    trained in between: one fixed interval cannot hold that, as a checkpoint holds every level's
    weights (0.9 GB for ffhq1024) from 4x4 on, while a kimg at 4x4 takes a fraction of one at 1024.
    """

    def __init__(self, every: int, images_seen: int, budget: float | None = None):
        if every < 1:
            raise ValueError(f"checkpoint interval must be >= 1 image, got {every}")
        self.every, self.budget = every, budget
        self.next_at = (images_seen // every + 1) * every

    def due(self, images_seen: int) -> bool:
        return images_seen >= self.next_at

    def checkpointed(self, images_seen: int, cost_s: float = 0.0, sec_per_image: float = 0.0) -> int:
        """Record a checkpoint at ``images_seen`` that stopped training for ``cost_s`` seconds, training
        taking ``sec_per_image``; returns the images of the next one (a multiple of ``every``)."""
        # The next multiple of the interval; ticks rarely land on one, and rounding images_seen + every
        # up instead would skip one (a checkpoint at 10,016 of every 10,000 -> the next at 30,000).
        self.next_at = (images_seen // self.every + 1) * self.every
        if self.budget and sec_per_image > 0:
            gap = math.ceil(cost_s / (self.budget * sec_per_image))
            self.next_at = max(self.next_at, -(-(images_seen + gap) // self.every) * self.every)
        return self.next_at

"""The single-process training loop, reused by the Ray Train worker and the benchmarks.

``train`` asks the schedule where it is, draws this worker's slice of the global batch from a
``batches(stage, n)`` callable, runs one ALAE iteration, and every ``tick_kimg`` hands a ``Tick`` to
``on_tick`` (reporting, samples, checkpoints). Losses stay on the device between ticks; a loss that
became NaN or inf stops the run at the next tick (``NonFiniteLossError`` naming phase and iteration),
before anything is saved. Nothing here knows about Ray or files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .layers import downsample_to
from .phases import ALAEPhases
from .schedule import Stage, per_worker_batch, stage_at


@dataclass
class Tick:
    stage: Stage
    images_seen: int  # global count so far
    kimg: float  # the same in thousands
    iteration: int
    losses: dict[str, float]  # means over the iterations since the last tick
    sec_per_kimg: float
    images_per_sec: float  # global images per second
    level_changed: bool = False
    extra: dict = field(default_factory=dict)


class TensorImages:
    """An in-memory image set served at any level: area-downsampled, reshuffled every epoch.

    ``images`` is [N, C, R, R] in [-1, 1] (or [N, D] for the MLP); levels below R are made by
    repeated 2x2 averaging, the same operator as the data pipeline and the encoder's fade-in.
    """

    def __init__(self, images: torch.Tensor, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.levels = {images.shape[-1]: images}
        self.gen = torch.Generator().manual_seed(seed)
        self.rank, self.world_size = rank, world_size
        self.order = torch.empty(0, dtype=torch.long)
        self.pos = 0
        self.epoch = 0
        self.n = images.shape[0]

    def state_dict(self) -> dict:
        """Position in the stream, for exact resume (plain lists: JSON-safe)."""
        return {"rng": self.gen.get_state().tolist(), "order": self.order.tolist(), "pos": self.pos,
                "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(torch.tensor(state["rng"], dtype=torch.uint8))
        self.order = torch.tensor(state["order"], dtype=torch.long)
        self.pos, self.epoch = int(state["pos"]), int(state["epoch"])

    def at(self, resolution: int) -> torch.Tensor:
        if resolution not in self.levels:
            top = max(self.levels)
            if resolution > top or self.levels[top].dim() != 4:
                return self.levels[top]
            self.levels[resolution] = downsample_to(self.levels[top], resolution)
        return self.levels[resolution]

    def __call__(self, stage: Stage, n: int) -> torch.Tensor:
        # Every worker walks the same global permutation and takes its own slice of each global batch.
        global_n = n * self.world_size
        if self.pos + global_n > len(self.order):
            self.order = torch.randperm(self.n, generator=self.gen)
            while len(self.order) < global_n:  # tiny datasets: repeat the permutation
                self.order = torch.cat([self.order, torch.randperm(self.n, generator=self.gen)])
            self.pos = 0
            self.epoch += 1
        idx = self.order[self.pos + self.rank * n:self.pos + (self.rank + 1) * n]
        self.pos += global_n
        return self.at(stage.resolution)[idx]


def train(phases: ALAEPhases, batches: Callable[[Stage, int], torch.Tensor], *, max_kimg: float,
          tick_kimg: float = 1.0, on_tick: Callable[[Tick], None] | None = None) -> ALAEPhases:
    """Train until ``max_kimg`` thousand images; resumes from wherever ``phases`` stands."""
    cfg = phases.cfg
    sums: dict[str, float] = {}
    count = 0
    # Integer image counts: float kimg sums drift (0.144 - 0.128 < 0.016) and would skip ticks.
    stop, every = round(max_kimg * 1000), round(tick_kimg * 1000)
    tick_start, tick_start_time = phases.images_seen, time.perf_counter()
    last_level = phases.level
    while phases.images_seen < stop:
        stage = stage_at(cfg, phases.kimg)
        x = batches(stage, per_worker_batch(stage.batch, phases.shard.world_size))
        losses = phases.step(x, stage)
        for k, v in losses.items():  # device tensors: summed there, read once per tick
            sums[k] = sums[k] + v if k in sums else v
        count += 1
        done = phases.images_seen >= stop
        if done or (on_tick is not None and phases.images_seen - tick_start >= every):
            phases.check_finite()  # before anything is reported or saved
        if on_tick is not None and (phases.images_seen - tick_start >= every or done):
            means = {k: float(v) / count for k, v in sums.items()}  # waits for the device
            elapsed = time.perf_counter() - tick_start_time
            kimg = (phases.images_seen - tick_start) / 1000.0
            on_tick(Tick(stage=stage, images_seen=phases.images_seen, kimg=phases.kimg, iteration=phases.iteration,
                         losses=means,
                         sec_per_kimg=elapsed / kimg, images_per_sec=kimg * 1000.0 / elapsed,
                         level_changed=stage.level != last_level))
            sums, count = {}, 0
            tick_start, tick_start_time = phases.images_seen, time.perf_counter()
            last_level = stage.level
    return phases

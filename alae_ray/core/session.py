"""One process's training run: the ALAE phases, its batches, checkpoints when due, and callbacks.

Every trainer drives ``Session``: the Ray Train worker (which adds only the reporting, the rank
gathers and the checkpoint hand-off), the MNIST trainer, the benchmarks and the tests. Every
``tick_kimg`` it builds the tick's metrics row and, when the ``CheckpointPacer`` says one is due (and
always at the end), a ``Snapshot`` of everything an exact resume needs, and hands both to the
callbacks in order. Losses stay on the device between ticks; a loss that became NaN or inf stops the
run at the next tick (``NonFiniteLossError`` naming phase and iteration), before any callback sees it.
Nothing here knows about Ray or where checkpoints go.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch

from .layers import downsample_to
from .pacing import CheckpointPacer
from .phases import ALAEPhases
from .schedule import Stage, stage_at


class Batches(Protocol):
    """This worker's part of each global batch, and its position for an exact resume."""

    epoch: int

    def __call__(self, stage: Stage, part: slice) -> torch.Tensor:
        """Rows ``part`` (``Shard.part``) of the next global batch of ``stage.batch``."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class Tick:
    stage: Stage
    images_seen: int  # global count so far
    kimg: float  # the same in thousands
    iteration: int
    losses: dict[str, float]  # means over the iterations since the last tick and the global batches
    metrics: dict  # the row reported for this tick; a callback may add to it for those after it
    level_changed: bool = False
    final: bool = False  # the run's last tick

    @property
    def sec_per_kimg(self) -> float:
        return self.metrics["sec_per_kimg"]

    @property
    def images_per_sec(self) -> float:  # global images per second
        return self.metrics["images_per_sec"]


@dataclass(frozen=True)
class Snapshot:
    """Everything an exact resume needs: flat named tensors (safetensors) and JSON progress."""

    tensors: dict[str, torch.Tensor]
    progress: dict


Callback = Callable[[Tick, "Snapshot | None"], None]


def alone(obj) -> list:
    """``gather`` for a single process: every rank's ``obj``, in rank order."""
    return [obj]


class Session:
    """Trains ``phases`` on ``data`` up to ``max_kimg`` thousand images, from wherever they stand.

    ``gather(obj) -> [obj of rank 0, 1, ...]`` is the only thing that crosses workers (losses averaged
    over them, every rank's RNG state in rank 0's checkpoint, the pacer's next checkpoint); without a
    ``pacer`` there are no snapshots at all.
    """

    def __init__(self, phases: ALAEPhases, data: Batches, *, max_kimg: float, tick_kimg: float = 1.0,
                 pacer: CheckpointPacer | None = None, callbacks: Sequence[Callback] = (),
                 gather: Callable[[object], list] = alone):
        self.phases, self.data, self.pacer, self.gather = phases, data, pacer, gather
        self.callbacks = list(callbacks)
        # Integer image counts: float kimg sums drift (0.144 - 0.128 < 0.016) and would skip ticks.
        self.stop, self.every = round(max_kimg * 1000), round(tick_kimg * 1000)
        self.fixed: dict[str, torch.Tensor] = {}  # kept in every checkpoint (the sample grids' z)
        self.started = time.perf_counter()

    @property
    def rank(self) -> int:
        return self.phases.shard.rank

    def snapshot(self) -> Snapshot:
        """The state now; every rank calls it (the RNG states are gathered)."""
        p = self.phases
        mine = {"cpu": torch.get_rng_state()}
        if p.cuda:
            mine["cuda"] = torch.cuda.get_rng_state(p.device)
        rng = {f"rng.rank{r}.{k}": v for r, s in enumerate(self.gather(mine)) for k, v in s.items()}
        return Snapshot({**p.tensors(), **rng, **{f"fixed.{k}": v for k, v in self.fixed.items()}},
                        {**p.progress(), "data": self.data.state_dict(), "kimg": p.kimg, "workers": p.shard.world_size})

    def restore(self, tensors: dict[str, torch.Tensor], progress: dict, *, data: bool = True) -> None:
        """Continue from a ``snapshot`` (``data``: at its position in the data too). A checkpoint of
        another run or worker count restores what it has: this rank's RNG only if it was saved."""
        p = self.phases
        p.load(tensors, progress)
        own = f"rng.rank{self.rank}."
        if own + "cpu" in tensors:
            torch.set_rng_state(tensors[own + "cpu"])
        if p.cuda and own + "cuda" in tensors:
            torch.cuda.set_rng_state(tensors[own + "cuda"], p.device)
        if data and "data" in progress:
            self.data.load_state_dict(progress["data"])
        self.fixed.update({k[len("fixed."):]: v for k, v in tensors.items() if k.startswith("fixed.")})

    def run(self) -> ALAEPhases:
        p = self.phases
        sums: dict[str, torch.Tensor] = {}
        count, waited = 0, 0.0
        tick_start, tick_start_time = p.images_seen, time.perf_counter()
        since = (tick_start_time, p.images_seen)  # when and where the last checkpoint ended
        last_level = p.level
        while p.images_seen < self.stop:
            stage = stage_at(p.cfg, p.kimg)
            asked = time.perf_counter()
            x = self.data(stage, p.shard.part(stage.batch))
            waited += time.perf_counter() - asked
            losses = p.step(x, stage)
            for k, v in losses.items():  # device tensors: summed there, read once per tick
                sums[k] = sums[k] + v if k in sums else v
            count += 1
            final = p.images_seen >= self.stop
            if not (final or p.images_seen - tick_start >= self.every):
                continue
            p.check_finite()  # before anything is reported or saved
            elapsed = time.perf_counter() - tick_start_time
            tick = self._tick(stage, {k: float(v) / count for k, v in sums.items()},  # waits for the device
                              elapsed, waited, p.images_seen - tick_start, stage.level != last_level, final)
            c0 = time.perf_counter()
            due = self.pacer is not None and (final or self.pacer.due(p.images_seen))
            snapshot = self.snapshot() if due else None
            for callback in self.callbacks:
                callback(tick, snapshot)
            if due:
                # Rank 0 stood still longest (the write, samples, uploads): its figures pace every rank.
                per_image = (c0 - since[0]) / max(1, p.images_seen - since[1])
                next_at = self.pacer.checkpointed(p.images_seen, time.perf_counter() - c0, per_image)
                self.pacer.next_at = self.gather(next_at)[0]
                since = (time.perf_counter(), p.images_seen)
            sums, count, waited = {}, 0, 0.0
            tick_start, tick_start_time = p.images_seen, time.perf_counter()
            last_level = stage.level
        return p

    def _tick(self, stage: Stage, local: dict[str, float], elapsed: float, waited: float, images: int,
              level_changed: bool, final: bool) -> Tick:
        p = self.phases
        # each loss of the global batch, not this rank's part of it: the ranks' means weighted by share
        per_rank = self.gather((p.shard.weight, local, waited))
        losses = {k: sum(w * r[k] for w, r, _ in per_rank) for k in local}
        kimg = images / 1000.0
        metrics = {"kimg": p.kimg, "iteration": p.iteration, "level": stage.level, "resolution": stage.resolution,
                   "alpha": stage.alpha, "batch": stage.batch, "lr": stage.lr, **losses,
                   "sec_per_kimg": elapsed / kimg, "images_per_sec": images / elapsed, "workers": p.shard.world_size,
                   # the tick's seconds the slowest rank waited for its batches (the rest is the step)
                   "data_wait_s": max(r[2] for r in per_rank),
                   "epoch": getattr(self.data, "epoch", None), "wall_s": time.perf_counter() - self.started,
                   "time": time.time()}  # when the tick ended (Unix s): lines rows up with other processes
        if p.cuda:
            metrics["gpu_mem_gib"] = torch.cuda.max_memory_allocated(p.device) / 2**30
        return Tick(stage=stage, images_seen=p.images_seen, kimg=p.kimg, iteration=p.iteration, losses=losses,
                    metrics=metrics, level_changed=level_changed, final=final)


def train(phases: ALAEPhases, data: Batches, *, max_kimg: float, tick_kimg: float = 1.0,
          callbacks: Sequence[Callback] = ()) -> ALAEPhases:
    """A session without checkpoints, for the benchmarks and the tests."""
    return Session(phases, data, max_kimg=max_kimg, tick_kimg=tick_kimg, callbacks=callbacks).run()


class TensorImages:
    """An in-memory image set served at any level: area-downsampled, reshuffled every epoch.

    ``images`` is [N, C, R, R] in [-1, 1] (or [N, D] for the MLP); levels below R are made by
    repeated 2x2 averaging, the same operator as the data pipeline and the encoder's fade-in. Every
    process walks the same permutation, taking its part of each global batch.
    """

    def __init__(self, images: torch.Tensor, seed: int = 0):
        self.levels = {images.shape[-1]: images}
        self.gen = torch.Generator().manual_seed(seed)
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

    def __call__(self, stage: Stage, part: slice) -> torch.Tensor:
        global_n = stage.batch
        if self.pos + global_n > len(self.order):
            self.order = torch.randperm(self.n, generator=self.gen)
            while len(self.order) < global_n:  # tiny datasets: repeat the permutation
                self.order = torch.cat([self.order, torch.randperm(self.n, generator=self.gen)])
            self.pos = 0
            self.epoch += 1
        idx = self.order[self.pos + part.start:self.pos + part.stop]
        self.pos += global_n
        return self.at(stage.resolution)[idx]

"""The order training reads a level in, as a pure function of where it is, whatever the worker count.

Blocks are fixed row ranges of each shard (its Parquet row groups as ``prepare`` writes them), so
they do not depend on the cluster. Epoch ``e`` of a level: the blocks in a seeded order, joined and
rotated by a seeded offset, then cut into ``streams`` equal data streams (the ``N % streams`` rows
left over are different ones each epoch); each stream permutes its rows within windows of
``window`` rows. Global batch ``k`` is the ``k``-th ``batch / streams`` rows of every stream, in
stream order, so which rows make it up depends only on (seed, resolution, epoch, k): each of ``W``
workers serves a contiguous share of the streams (``core.schedule.split_streams``: any ``W`` up to
``streams``, unequal shares where ``W`` does not divide them; ``streams`` must divide every batch),
and any ``W`` gives the same rows in the same batches. A position (epoch,
rows taken from each stream) is all a resume needs, at any worker count: it starts reading at the
window holding that row (at most one window and one row group early), not at the start of the epoch.

A worker reads its streams' blocks as one sequence, in the order its streams need them
(``WorkerPlan.reads``), each block once, and hands each stream its rows (``WorkerPlan.batches``).

No Ray here: ``alae_ray.data.ray_reader.segments_dataset`` reads the segments as a Ray Dataset for
the training workers; ``read_segment`` reads one in this process.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import pyarrow.parquet as pq

from . import layout
from .layout import Manifest
from .storage import DatasetError, Location

# A window's pixels are held in memory: at most this many bytes, whatever the shuffle buffer asks.
WINDOW_BYTES = 256 << 20
COLUMNS = ("id", "image")  # what training reads
MAX_STREAMS = 32  # the default data streams: as many worker counts as the batches allow, up to this


@dataclass(frozen=True)
class Segment:
    """Rows [start, stop) of one shard (its path relative to the dataset root)."""

    path: str
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def blocks(manifest: Manifest, resolution: int, split: str = "train") -> list[Segment]:
    """A level's blocks in manifest order: each shard cut at its row groups."""
    per = layout.row_group_rows(manifest.channels * resolution * resolution)
    return [Segment(s.path, a, min(a + per, s.rows))
            for s in manifest.shards_for(resolution, split) for a in range(0, s.rows, per)]


def window_rows(buffer: int, channels: int, resolution: int, streams: int = 1) -> int:
    """Rows each stream permutes together: its share of ``buffer``, or less where all of them together
    would not fit in WINDOW_BYTES (what one worker holds at most, serving every stream)."""
    return max(1, min(buffer, WINDOW_BYTES // (channels * resolution * resolution)) // streams)


def default_streams(batches: Iterable[int]) -> int:
    """The largest divisor of every batch up to MAX_STREAMS: the most worker counts the batches allow."""
    g = math.gcd(*batches)
    return max(d for d in range(1, min(g, MAX_STREAMS) + 1) if g % d == 0)


def _slice(segments: list[Segment], start: int, stop: int) -> list[Segment]:
    """Rows [start, stop) of the segments joined end to end, as segments."""
    out, at = [], 0
    for s in segments:
        a, b = max(start, at), min(stop, at + s.rows)
        if a < b:
            out.append(Segment(s.path, s.start + a - at, s.start + b - at))
        at += s.rows
        if at >= stop:
            break
    return out


@dataclass(frozen=True)
class EpochPlan:
    """One stream's rows of one epoch: what to read, in order, and how each window is permuted."""

    segments: tuple[Segment, ...]
    rows: int  # the same for every stream
    window: int
    key: tuple[int, ...]  # seeds the window permutations

    def order(self, k: int) -> np.ndarray:
        """Window ``k``'s rows in the order they are taken (indices within the window)."""
        return np.random.default_rng([*self.key, k]).permutation(min(self.window, self.rows - k * self.window))

    def from_row(self, row: int) -> tuple[list[Segment], int]:
        """(the segments to read to go on from ``row``, the row they start at: its window's first)."""
        start = row // self.window * self.window
        return _slice(list(self.segments), start, self.rows), start


def plan_epoch(level_blocks: list[Segment], *, seed: int, resolution: int, epoch: int, stream: int, streams: int,
               window: int) -> EpochPlan:
    total = sum(b.rows for b in level_blocks)
    per_stream = total // streams
    rng = np.random.default_rng([seed, resolution, epoch])  # the same on every worker
    order = [level_blocks[i] for i in rng.permutation(len(level_blocks))]
    first = (int(rng.integers(total)) + stream * per_stream) % total if total else 0
    return EpochPlan(tuple(_slice(order + order, first, first + per_stream)), per_stream, window,
                     (seed, resolution, epoch, stream))


@dataclass(frozen=True)
class WorkerPlan:
    """One worker's streams of one epoch, read as one sequence and served as one batch."""

    plans: tuple[EpochPlan, ...]

    @property
    def rows(self) -> int:
        """Rows of each stream (the same for all)."""
        return self.plans[0].rows

    def reads(self, row: int) -> list[tuple[int, Segment]]:
        """(stream index in ``plans``, segment) to read to go on from ``row`` of every stream, in the
        order the streams need them: window by window, for each stream the blocks that complete it.
        Each block is read once; a stream keeps what it read past its window for the next."""
        starts = [p.from_row(row) for p in self.plans]
        first, window = starts[0][1], self.plans[0].window
        pending = [deque(segments) for segments, _ in starts]
        have = [0] * len(pending)
        out = []
        for end in range(first + window, self.rows + window, window):
            need = min(end, self.rows) - first
            for i, queue in enumerate(pending):
                while have[i] < need and queue:
                    out.append((i, queue.popleft()))
                    have[i] += out[-1][1].rows
        return out

    def batches(self, row: int, chunks: Iterable[dict[str, np.ndarray]], n: int) -> Iterator[dict[str, np.ndarray]]:
        """This worker's batches of ``n`` rows (``n / len(plans)`` from each stream, in stream order)
        from ``row`` of every stream, given ``chunks``: the rows of ``reads(row)`` in order, in pieces
        of any size."""
        k = len(self.plans)
        if n % k:
            raise ValueError(f"a worker's batch of {n} does not split over its {k} data streams")
        route = _Router([(i, s.rows) for i, s in self.reads(row)], chunks, k)
        parts = [batches(p, row, route.rows_of(i), n // k) for i, p in enumerate(self.plans)]
        for pieces in zip(*parts):
            yield pieces[0] if k == 1 else {key: np.concatenate([p[key] for p in pieces]) for key in pieces[0]}


class _Router:
    """The rows of one read sequence, handed to the streams they belong to (by the segments' rows)."""

    def __init__(self, owners: list[tuple[int, int]], chunks: Iterable[dict[str, np.ndarray]], k: int):
        self.owners, self.chunks = deque(owners), iter(chunks)
        self.queues: list[deque] = [deque() for _ in range(k)]
        self.rest: dict[str, np.ndarray] | None = None  # the part of the last chunk not yet routed

    def rows_of(self, i: int) -> Iterator[dict[str, np.ndarray]]:
        while True:
            while not self.queues[i]:
                if not self._route():
                    return  # the data ended: the stream's ``batches`` says how short it is
            yield self.queues[i].popleft()

    def _route(self) -> bool:
        chunk = self.rest if self.rest is not None else next(self.chunks, None)
        if chunk is None or not self.owners:
            return False
        owner, rows = self.owners[0]
        size = len(chunk["id"])
        take = min(size, rows)
        self.queues[owner].append(chunk if take == size else {k: v[:take] for k, v in chunk.items()})
        self.rest = None if take == size else {k: v[take:] for k, v in chunk.items()}
        if take == rows:
            self.owners.popleft()
        else:
            self.owners[0] = (owner, rows - take)
        return True


def batches(plan: EpochPlan, row: int, chunks: Iterable[dict[str, np.ndarray]], n: int
            ) -> Iterator[dict[str, np.ndarray]]:
    """Batches of ``n`` rows from ``row`` to the epoch's last whole batch, given ``chunks``: the rows
    of ``plan.from_row(row)[0]`` in order, in pieces of any size. A window is kept as the pieces it
    came in; each row is copied once, into its batch."""
    window, skip = divmod(row, plan.window)
    chunks = iter(chunks)
    left: list[dict[str, np.ndarray]] = []  # read past the last window queued
    queued: deque = deque()  # (pieces, their first rows, rows to take in order) per window
    ready = 0
    while row + n <= plan.rows:
        while ready < n:  # queue the next window: its pieces, and its permutation
            size, pieces, have = min(plan.window, plan.rows - window * plan.window), [], 0
            while have < size:
                chunk = left.pop() if left else next(chunks, None)
                if chunk is None:
                    raise DatasetError(f"the data ended {size - have} rows short of window {window} "
                                       f"(was a shard changed after the manifest was written?)")
                cut = min(len(chunk["id"]), size - have)
                if cut < len(chunk["id"]):
                    left.append({k: v[cut:] for k, v in chunk.items()})
                pieces.append({k: v[:cut] for k, v in chunk.items()})
                have += cut
            take = plan.order(window)[skip:]
            queued.append((pieces, np.cumsum([0] + [len(p["id"]) for p in pieces]), take))
            ready, window, skip = ready + len(take), window + 1, 0
        parts, need = [], n
        while need:
            pieces, starts, take = queued[0]
            now, rest = take[:need], take[need:]
            parts.append(_gather(pieces, starts, now))
            need -= len(now)
            if len(rest):
                queued[0] = (pieces, starts, rest)
            else:
                queued.popleft()
        ready, row = ready - n, row + n
        yield parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _gather(pieces: list[dict[str, np.ndarray]], starts: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The window's ``rows`` (indices from its first row), copied out of the pieces holding them."""
    which = np.searchsorted(starts, rows, side="right") - 1
    out = {k: np.empty((len(rows), *v.shape[1:]), v.dtype) for k, v in pieces[0].items()}
    for p in np.unique(which):
        here = which == p
        for k in out:
            out[k][here] = pieces[p][k][rows[here] - starts[p]]
    return out


def read_segment(loc: Location, channels: int, resolution: int, segment: Segment) -> dict[str, np.ndarray]:
    """A segment's ``id`` and ``image`` (uint8 [N, C, R, R]), reading only the row groups it spans."""
    with layout.open_shard(loc, segment.path) as f:
        pf = pq.ParquetFile(f)
        groups, first, at = [], 0, 0
        for i in range(pf.metadata.num_row_groups):
            size = pf.metadata.row_group(i).num_rows
            if at < segment.stop and at + size > segment.start:
                first = at if not groups else first
                groups.append(i)
            at += size
        if segment.stop > at:
            raise DatasetError(f"{loc.uri_of(segment.path)}: has {at} rows, the manifest says at least {segment.stop}")
        table = pf.read_row_groups(groups, columns=list(COLUMNS)).slice(segment.start - first, segment.rows)
    return {"id": table.column("id").to_numpy(),
            "image": layout.image_array(table.column("image"), channels, resolution)}

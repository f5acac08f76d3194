"""The order a training worker reads a level in, as a pure function of where it is.

Blocks are fixed row ranges of each shard (its Parquet row groups as ``prepare`` writes them), so
they do not depend on the cluster. Epoch ``e`` of a level: the blocks in a seeded order, joined and
rotated by a seeded offset, then cut into ``world`` equal slices; rank ``r`` takes the ``r``-th (the
``N % world`` rows left over are different ones each epoch) and permutes it within windows of
``window`` rows. A row's place depends only on (seed, resolution, epoch, rank, world, window), so a
position (epoch, rows taken) is all a resume needs: it starts reading at the window holding that
row (at most one window and one row group early), not at the start of the epoch.

No Ray here: ``alae_ray.data.ray_reader.segments_dataset`` reads the segments as a Ray Dataset for
the training workers; ``read_segment`` reads one in this process.
"""

from __future__ import annotations

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


def window_rows(buffer: int, channels: int, resolution: int) -> int:
    """Rows permuted together: ``buffer``, or fewer where that would not fit in WINDOW_BYTES."""
    return max(1, min(buffer, WINDOW_BYTES // (channels * resolution * resolution)))


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
    """One rank's rows of one epoch: what to read, in order, and how each window is permuted."""

    segments: tuple[Segment, ...]
    rows: int  # the same for every rank
    window: int
    key: tuple[int, ...]  # seeds the window permutations

    def order(self, k: int) -> np.ndarray:
        """Window ``k``'s rows in the order they are taken (indices within the window)."""
        return np.random.default_rng([*self.key, k]).permutation(min(self.window, self.rows - k * self.window))

    def from_row(self, row: int) -> tuple[list[Segment], int]:
        """(the segments to read to go on from ``row``, the row they start at: its window's first)."""
        start = row // self.window * self.window
        return _slice(list(self.segments), start, self.rows), start


def plan_epoch(level_blocks: list[Segment], *, seed: int, resolution: int, epoch: int, rank: int, world: int,
               window: int) -> EpochPlan:
    total = sum(b.rows for b in level_blocks)
    per_rank = total // world
    rng = np.random.default_rng([seed, resolution, epoch])  # the same on every rank
    order = [level_blocks[i] for i in rng.permutation(len(level_blocks))]
    first = (int(rng.integers(total)) + rank * per_rank) % total if total else 0
    return EpochPlan(tuple(_slice(order + order, first, first + per_rank)), per_rank, window,
                     (seed, resolution, epoch, rank))


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

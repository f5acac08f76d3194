"""Ray Data datasets over a prepared dataset.

``segments_dataset``: the rows of given segments, in order (what ``alae-ray train``'s workers read,
epoch by epoch, following ``alae_ray.data.stream``'s plan). ``level_dataset``: a whole level, for
your own pipelines::

    manifest = open_dataset("s3://bucket/ffhq")
    ds = level_dataset(manifest, 64, "train")          # rows: image uint8 [C, R, R], id, key, ...
    for epoch in range(epochs):
        for batch in ds.iter_batches(batch_size=b, batch_format="numpy"):
            x = to_tensor_batch(batch, flip=True, epoch=epoch)   # float32 [N, C, R, R] in [-1, 1]

Datasets are lazy: a level's shards are fetched only when it is iterated. Every iteration (epoch)
reshuffles.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import ray.data
from ray.data import FileShuffleConfig, RandomSeedConfig

from . import layout
from .layout import Manifest
from .reader import check_level_schemas, location, open_dataset
from .storage import Location
from .stream import Segment, read_segment

Shuffle = Literal["rows", "files", "none"]


def _decode(table: pa.Table, channels: int, resolution: int) -> dict[str, np.ndarray]:
    # Reinterpret the fixed-width pixel bytes as uint8 [N, C, R, R]; no per-image decoding.
    out = {}
    if "image" in table.column_names:
        out["image"] = layout.image_array(table.column("image"), channels, resolution)
    for name in table.column_names:
        if name != "image":
            out[name] = table.column(name).to_numpy(zero_copy_only=False)
    return out


def _read_segments(items: dict[str, np.ndarray], loc: Location, channels: int, resolution: int
                   ) -> dict[str, np.ndarray]:
    parts = [read_segment(loc, channels, resolution, Segment(str(p), int(a), int(b)))
             for p, a, b in zip(items["path"], items["start"], items["stop"])]
    if len(parts) == 1:  # the usual case (batch_size=1): no copy beyond the read's own
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def segments_dataset(manifest: Manifest, resolution: int, segments: list[Segment]) -> ray.data.Dataset:
    """The rows (``id``, ``image`` uint8 [C, R, R]) of ``segments``, one read task per segment (a
    row group or less); iterate it with the DataContext's ``preserve_order`` set to keep their order."""
    items = [{"path": s.path, "start": s.start, "stop": s.stop} for s in segments]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    return ds.map_batches(_read_segments, batch_size=1, fn_kwargs={
        "loc": location(manifest), "channels": manifest.channels, "resolution": resolution})


def level_dataset(manifest: Manifest | str, resolution: int, split: str = "train", *,
                  shuffle: Shuffle = "rows", seed: int | None = None, columns: list[str] | None = None,
                  check_schema: bool = True) -> ray.data.Dataset:
    """A Ray Dataset of one level: rows with ``image`` (uint8 [C, R, R]), ``id``, ``key``, labels.

    ``shuffle``: "rows" (a full random shuffle, new each epoch: Ray reseeds per execution),
    "files" (shard order only, cheaper for large levels; combine with
    ``iter_batches(local_shuffle_buffer_size=...)``), or "none" (stored order). ``seed`` makes the
    sequence of epoch orders reproducible. Schemas are checked first, so a wrong file fails here,
    naming it, rather than inside a read task.
    """
    if shuffle not in ("rows", "files", "none"):
        raise ValueError(f"shuffle must be 'rows', 'files' or 'none', got {shuffle!r}")
    m = manifest if isinstance(manifest, Manifest) else open_dataset(manifest)
    shards = m.shards_for(resolution, split)
    if not shards:
        raise layout.DatasetError(f"{m.uri}: level {resolution} split {split!r} has no rows")
    if check_schema:
        check_level_schemas(m, resolution, split)
    loc = location(m)
    file_shuffle = None
    if shuffle in ("rows", "files"):
        file_shuffle = FileShuffleConfig(seed=seed, reseed_after_execution=True) if seed is not None else "files"
    ds = ray.data.read_parquet([loc.join(s.path) for s in shards], filesystem=loc.fs, columns=columns,
                               partitioning=None, shuffle=file_shuffle)
    ds = ds.map_batches(_decode, batch_format="pyarrow", zero_copy_batch=True,
                        fn_kwargs={"channels": m.channels, "resolution": resolution})
    if shuffle == "rows":
        ds = ds.random_shuffle(seed=RandomSeedConfig(seed=seed, reseed_after_execution=True) if seed is not None else None)
    return ds


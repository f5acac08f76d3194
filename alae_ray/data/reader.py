"""Reading a prepared dataset without Ray: manifest, NumPy arrays, batches, tensors, verification."""

from __future__ import annotations

import io
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import layout
from .layout import Manifest
from .storage import DatasetError, Location, check_bucket, read_bytes, resolve


def open_dataset(uri: str) -> Manifest:
    """The manifest of a finished dataset at a local path or ``s3://bucket/prefix``.

    Raises DatasetError naming the URI when the bucket, the dataset or its manifest is missing.
    """
    loc = resolve(uri)
    check_bucket(loc)
    return layout.read_manifest(loc)


def _manifest(ds: Manifest | str) -> Manifest:
    return ds if isinstance(ds, Manifest) else open_dataset(ds)


def location(manifest: Manifest) -> Location:
    return resolve(manifest.uri)


def check_level_schemas(manifest: Manifest, resolution: int, split: str = "train") -> None:
    """Read every shard footer of a level; DatasetError naming the first shard of a wrong schema."""
    loc = location(manifest)
    expected = manifest.schema(resolution)
    shards = manifest.shards_for(resolution, split)
    with ThreadPoolExecutor(16) as pool:
        schemas = list(pool.map(lambda s: layout.read_shard_schema(loc, s.path), shards))
    for shard, schema in zip(shards, schemas):
        layout.check_schema(schema, expected, loc.uri_of(shard.path))


def _table_batch(table: pa.Table, manifest: Manifest, resolution: int) -> dict[str, np.ndarray]:
    out = {"image": layout.image_array(table.column("image"), manifest.channels, resolution)}
    for name in table.column_names:
        if name != "image":
            out[name] = table.column(name).to_numpy(zero_copy_only=False)
    return out


def _read_shard(loc: Location, manifest: Manifest, shard: layout.Shard) -> pa.Table:
    where = loc.uri_of(shard.path)
    try:
        table = pq.read_table(io.BytesIO(read_bytes(loc, shard.path)))
    except pa.ArrowException as exc:
        raise DatasetError(f"{where}: not a readable Parquet file ({exc})") from None
    layout.check_schema(table.schema, manifest.schema(shard.resolution), where)
    return table


def iter_level_tables(manifest: Manifest | str, resolution: int, split: str = "train") -> Iterator[pa.Table]:
    """Each shard of a level as an Arrow table, in manifest order, one shard in memory at a time."""
    m = _manifest(manifest)
    loc = location(m)
    for shard in m.shards_for(resolution, split):
        yield _read_shard(loc, m, shard)


def read_level_numpy(manifest: Manifest | str, resolution: int, split: str = "train") -> dict[str, np.ndarray]:
    """A whole level as arrays: ``image`` uint8 [N, C, R, R], ``id``, ``key``, ``label``, factors."""
    m = _manifest(manifest)
    tables = list(iter_level_tables(m, resolution, split))
    if not tables:
        empty = pa.Table.from_batches([], schema=m.schema(resolution))
        return _table_batch(empty, m, resolution)
    return _table_batch(pa.concat_tables(tables), m, resolution)


def read_first_rows(manifest: Manifest | str, resolution: int, split: str = "train", count: int = 8) -> dict[str, np.ndarray]:
    """The first ``count`` rows of a level in stored order, reading only the shards they are in
    (usually one: a whole split of a 1024x1024 level would be tens of GB)."""
    m = _manifest(manifest)
    loc = location(m)
    tables, rows = [], 0
    for shard in m.shards_for(resolution, split):
        if rows >= count:
            break
        tables.append(_read_shard(loc, m, shard))
        rows += tables[-1].num_rows
    table = pa.concat_tables(tables).slice(0, count) if tables else pa.Table.from_batches([], schema=m.schema(resolution))
    return _table_batch(table, m, resolution)


def iter_level_batches(manifest: Manifest | str, resolution: int, split: str = "train", batch_size: int = 64,
                       *, seed: int | None = None, drop_last: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Batches of a level for single-process use: shuffled with ``seed`` (shard order, then rows
    within each shard), or in stored order with ``seed=None``. Pass ``seed + epoch`` for a
    new order every epoch."""
    m = _manifest(manifest)
    loc = location(m)
    shards = m.shards_for(resolution, split)
    rng = np.random.default_rng(seed) if seed is not None else None
    if rng is not None:
        shards = [shards[i] for i in rng.permutation(len(shards))]
    carry: dict[str, np.ndarray] | None = None  # rows left over from the previous shard
    for shard in shards:
        part = _table_batch(_read_shard(loc, m, shard), m, resolution)
        if carry is not None:
            part = {k: np.concatenate([carry[k], part[k]]) for k in part}
        n = len(part["id"])
        # Gather each batch through an index order: one copy per row, none for the whole shard.
        order = rng.permutation(n) if rng is not None else np.arange(n)
        stop = n - n % batch_size
        for i in range(0, stop, batch_size):
            yield {k: v[order[i:i + batch_size]] for k, v in part.items()}
        carry = {k: v[order[stop:]] for k, v in part.items()}
    if carry is not None and len(carry["id"]) and not drop_last:
        yield carry


def to_tensor_batch(batch: Mapping[str, Any] | Any, flip: bool = False, epoch: int = 0, device=None):
    """uint8 images (NumPy or torch, [N, C, R, R]; or a batch dict with ``image``) as a float32
    torch tensor in [-1, 1]; ``flip`` mirrors about half of the images horizontally, chosen per
    (row id, ``epoch``) as training does (``alae_ray.core.pixels.mirror``: needs the batch's ``id``).

    The conversion happens here, on the consumer, so uint8 (4x smaller than float32) is what
    travels through Ray's object store.
    """
    import torch

    from ..core.pixels import mirror, signed

    images = batch["image"] if isinstance(batch, Mapping) else batch
    if isinstance(images, torch.Tensor):
        x = images
    else:
        with warnings.catch_warnings():  # read-only Arrow buffers: nothing below writes in place
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(np.ascontiguousarray(images))
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"expected uint8 images [N, C, R, R], got {x.dtype} {tuple(x.shape)}")
    if flip and not (isinstance(batch, Mapping) and "id" in batch):
        raise ValueError("flip needs a batch dict with the rows' id: flips are chosen per (row id, epoch)")
    if device is not None:
        x = x.to(device, non_blocking=True)
    if flip:
        x = mirror(x, batch["id"], epoch)  # the uint8 pixels (a quarter of the bytes of floats)
    return signed(x)


def verify(manifest: Manifest | str) -> dict:
    """Re-hash every shard and check its schema and row count against the manifest.

    Returns {"ok": bool, "checked": n, "bad": [{"path", "problem"}]}.
    """
    m = _manifest(manifest)
    loc = location(m)

    def check(shard: layout.Shard) -> str | None:
        try:
            data = read_bytes(loc, shard.path)
        except DatasetError as exc:
            return str(exc)
        if layout.sha256(data) != shard.sha256:
            return f"sha256 mismatch ({len(data)} bytes, manifest says {shard.bytes})"
        try:
            meta = pq.ParquetFile(io.BytesIO(data))
            layout.check_schema(meta.schema_arrow, m.schema(shard.resolution), loc.uri_of(shard.path))
        except (pa.ArrowException, DatasetError) as exc:
            return str(exc)
        if meta.metadata.num_rows != shard.rows:
            return f"{meta.metadata.num_rows} rows, manifest says {shard.rows}"
        return None

    with ThreadPoolExecutor(8) as pool:
        problems = list(pool.map(check, m.shards))
    bad = [{"path": loc.uri_of(s.path), "problem": p} for s, p in zip(m.shards, problems) if p]
    return {"ok": not bad, "checked": len(m.shards), "bad": bad}

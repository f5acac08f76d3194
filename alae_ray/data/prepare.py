"""``prepare``: a source into Parquet shards per level and split, resumable, manifest last.

Rows are cut into chunks of ``shard_rows`` source items (in a seeded random order, so every
shard is a random sample and file-level shuffling mixes well). Chunk ``c`` is shard ``c`` of the
top level; a lower level groups ``mult[L]`` consecutive chunks per shard (a power of two chosen
so shards stay near ``shard_bytes``), because a 4x4 shard of 20 images would be a 1 KB file.

Each finished shard gets a record under ``_progress/``, written after the shard itself. A re-run
lists the records, skips chunks whose shards are all recorded, reads a recorded top-level shard
back instead of decoding its sources again when only lower levels are missing, and never rewrites
a recorded shard. ``report.json`` and then ``manifest.json`` are written last.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Callable

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from . import layout
from .images import pyramid
from .layout import Manifest, Shard
from .sources import Loaded, Source
from .storage import DatasetError, Location, check_bucket, exists, list_files, read_bytes, resolve, write_bytes_atomic


@dataclass(frozen=True)
class PrepareOptions:
    test_fraction: float = 0.1  # held-out share when the source has no split of its own
    test_count: int | None = None  # held-out count; overrides test_fraction (FFHQ: 10000)
    seed: int = 0  # order of rows and the train/test split
    shard_rows: int | None = None  # source items per top-level shard (default from shard_bytes)
    shard_bytes: int = 64 << 20  # target uncompressed bytes per shard
    name: str | None = None
    progress: bool = True  # tqdm bars on stderr


def split_orders(source: Source, opts: PrepareOptions) -> dict[str, np.ndarray]:
    """Item indices of each split, each in a seeded random order (deterministic)."""
    n = len(source.keys)
    perm = np.random.default_rng(opts.seed).permutation(n)
    if source.fixed_split is not None:
        test_mask = source.fixed_split
    else:
        n_test = opts.test_count if opts.test_count is not None else int(round(n * opts.test_fraction))
        if not 0 <= n_test < n:
            raise DatasetError(f"held-out count {n_test} must be in [0, {n - 1}] for a source of {n} items")
        test_mask = np.zeros(n, bool)
        test_mask[perm[:n_test]] = True
    return {"train": perm[~test_mask[perm]], "test": perm[test_mask[perm]]}


def plan_for(source: Source, opts: PrepareOptions) -> dict:
    bytes_row = {r: source.channels * r * r for r in source.levels}
    top = max(source.levels)
    rows = opts.shard_rows or int(np.clip(opts.shard_bytes // bytes_row[top], 1, 1 << 20))
    if rows < 1:
        raise DatasetError(f"--shard-rows must be >= 1, got {rows}")
    # Largest power of two of chunks per shard keeping a shard under shard_bytes (at least 1).
    mult = {r: 1 << max(0, int(np.floor(np.log2(max(1, opts.shard_bytes // (rows * bytes_row[r])))))) for r in source.levels}
    digest = hashlib.sha256("\n".join(source.keys).encode()).hexdigest()
    return {"schema_version": layout.SCHEMA_VERSION, "source": source.description, "channels": source.channels,
            "resolutions": source.levels, "columns": {k: layout.type_name(t) for k, t in source.columns.items()},
            "seed": opts.seed, "test_fraction": opts.test_fraction, "test_count": opts.test_count,
            "shard_rows": rows, "mult": {str(r): m for r, m in mult.items()}, "items": len(source.keys),
            "items_sha256": digest}


def _read_records(loc: Location) -> dict[tuple[int, str, int], dict]:
    paths = [p for p in list_files(loc, layout.PROGRESS) if p.endswith(".json") and "/part-" in p]
    with ThreadPoolExecutor(16) as pool:  # many small GETs on S3
        recs = list(pool.map(lambda p: json.loads(read_bytes(loc, p)), paths))
    return {(r["resolution"], r["split"], int(PurePosixPath(r["path"]).stem.split("-")[1])): r for r in recs}


def _read_top_shard(loc: Location, rec: dict, source: Source) -> Loaded:
    table = pq.read_table(io.BytesIO(read_bytes(loc, rec["path"])))
    images = layout.image_array(table.column("image"), source.channels, rec["resolution"]).copy()
    cols = {k: table.column(k).to_numpy() for k in source.columns}
    return Loaded(table.column("id").to_numpy(), images, cols, rec.get("skipped", []), rec.get("notes", []))


def prepare(source: Source, dest: str, opts: PrepareOptions = PrepareOptions(),
            on_shard: Callable[[str], None] | None = None) -> Manifest:
    """Write (or finish writing) ``source`` as a dataset at ``dest``; returns its manifest.

    ``on_shard(path)`` is called after each shard is written and recorded (progress hooks).
    """
    loc = resolve(dest)
    check_bucket(loc)
    plan = plan_for(source, opts)
    plan_rel = f"{layout.PROGRESS}/plan.json"
    if exists(loc, plan_rel):
        old = json.loads(read_bytes(loc, plan_rel))
        if old != json.loads(json.dumps(plan)):
            changed = sorted(k for k in set(plan) | set(old) if json.dumps(plan.get(k)) != json.dumps(old.get(k)))
            raise DatasetError(f"{loc.uri}: holds a dataset prepared with other options ({', '.join(changed)} differ); "
                               "use a new destination")
    elif exists(loc, layout.MANIFEST):
        raise DatasetError(f"{loc.uri}: already holds a dataset without a preparation plan; use a new destination")
    else:
        write_bytes_atomic(loc, plan_rel, json.dumps(plan, indent=1).encode())
    if exists(loc, layout.MANIFEST):
        return layout.read_manifest(loc)

    done = _read_records(loc)
    orders = split_orders(source, opts)
    rows, top = plan["shard_rows"], max(source.levels)
    mult = {int(r): m for r, m in plan["mult"].items()}
    schemas = {r: layout.schema_for(source.channels, r, source.columns) for r in source.levels}
    lower = sorted(source.levels, reverse=True)[1:]

    def write(res: int, split: str, index: int, ids: np.ndarray, images: np.ndarray, cols: dict, extra: dict) -> None:
        rel = layout.shard_path(res, split, index)
        data = layout.encode_shard(ids, [source.keys[i] for i in ids], images, cols, schemas[res])
        write_bytes_atomic(loc, rel, data)
        rec = {"path": rel, "resolution": res, "split": split, "rows": int(len(ids)), "bytes": len(data),
               "sha256": layout.sha256(data), **extra}
        write_bytes_atomic(loc, layout.record_path(res, split, index), json.dumps(rec).encode())
        done[(res, split, index)] = rec
        if on_shard is not None:
            on_shard(rel)

    bar = tqdm(total=len(source.keys), desc=f"prepare {loc.uri}", unit="img", file=sys.stderr,
               disable=not opts.progress, dynamic_ncols=True)
    try:
        for split, order in orders.items():
            chunks = [order[i:i + rows] for i in range(0, len(order), rows)]
            pending: dict[int, list[Loaded]] = {r: [] for r in lower}
            for c, chunk in enumerate(chunks):
                if all((r, split, c // mult[r]) in done for r in source.levels):
                    bar.update(len(chunk))
                    continue
                if (top, split, c) in done:
                    loaded = _read_top_shard(loc, done[(top, split, c)], source)
                else:
                    loaded = source.load(chunk)
                    write(top, split, c, loaded.ids, loaded.images, loaded.columns,
                          {"items": len(chunk), "skipped": loaded.skipped, "notes": loaded.notes})
                levels = pyramid(loaded.images, source.levels)
                for r in lower:
                    j = c // mult[r]
                    if (r, split, j) in done:
                        continue
                    pending[r].append(Loaded(loaded.ids, levels[r], loaded.columns))
                    if c % mult[r] == mult[r] - 1 or c == len(chunks) - 1:
                        parts = pending[r]
                        write(r, split, j, np.concatenate([p.ids for p in parts]),
                              np.concatenate([p.images for p in parts]),
                              {k: np.concatenate([p.columns[k] for p in parts]) for k in source.columns}, {})
                        pending[r] = []
                bar.update(len(chunk))
    finally:
        bar.close()
    return _finish(loc, source, opts, plan, done)


def _finish(loc: Location, source: Source, opts: PrepareOptions, plan: dict, done: dict) -> Manifest:
    shards = tuple(Shard(**{k: rec[k] for k in ("path", "resolution", "split", "rows", "bytes", "sha256")})
                   for _, rec in sorted(done.items(), key=lambda kv: (-kv[0][0], kv[0][1], kv[0][2])))
    counts = {r: {s: sum(x.rows for x in shards if x.resolution == r and x.split == s) for s in layout.SPLITS}
              for r in source.levels}
    top = max(source.levels)
    tops = [rec for (r, _, _), rec in sorted(done.items()) if r == top]
    skipped = sorted((s for rec in tops for s in rec.get("skipped", [])), key=lambda s: s["key"])
    notes = sorted((n for rec in tops for n in rec.get("notes", [])), key=lambda n: n["key"])
    by_reason: dict[str, int] = {}
    for s in skipped:
        by_reason[s["reason"]] = by_reason.get(s["reason"], 0) + 1
    report = {"source": source.description, "items": len(source.keys), "rows": sum(counts[top].values()),
              "skipped_count": len(skipped), "skipped_by_reason": by_reason, "skipped": skipped,
              "converted": notes}
    write_bytes_atomic(loc, layout.REPORT, json.dumps(report, indent=1).encode())
    name = opts.name or PurePosixPath(loc.path).name or "dataset"
    manifest = Manifest(
        uri=loc.uri, name=name, source=source.description, channels=source.channels,
        resolutions=tuple(sorted(source.levels)), columns=plan["columns"], factors=tuple(source.factors),
        counts=counts, shards=shards, seed=opts.seed, skipped=len(skipped),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        extra={"split_policy": ("source's own split (MNIST train / t10k)" if source.fixed_split is not None else
                                f"seeded random hold-out: test_count={opts.test_count}, test_fraction={opts.test_fraction}"),
               "shard_rows": plan["shard_rows"]})
    # The commit point: a dataset without this file is unfinished, whatever else is there.
    write_bytes_atomic(loc, layout.MANIFEST, json.dumps(manifest.to_dict(), indent=1).encode())
    return manifest

"""The on-storage layout of a dataset: Parquet shards per level and split, and the manifest.

::

    ROOT/manifest.json                       written last: its presence means "complete"
    ROOT/report.json                         skipped and converted source files
    ROOT/r0032/train/part-00000.parquet      one folder per level (resolution) and split
    ROOT/r0004/test/part-00000.parquet
    ROOT/_progress/plan.json                 what is being prepared (resume refuses a different plan)
    ROOT/_progress/r0032/train/part-00000.json   one record per finished shard (rows, sha256, ...)

Row schema: ``id`` int64 (position in the source's sorted item list), ``key`` string (relative
path or item name), ``image`` fixed_size_binary(C*R*R) holding raw uint8 pixels in CHW order,
then the source's own columns (``label``, and the factor columns of procedural data).

Pixels are raw uint8, not PNG: a PNG costs a decode per image per epoch on the training hosts
(about 1 ms at 256x256 on one core), while a raw column compressed with zstd decodes at GB/s and
becomes a tensor by reinterpreting the buffer; the bytes stored grow modestly (see
docs/data.md for measured sizes).
"""

from __future__ import annotations

import hashlib
import io
import json
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .storage import DatasetError, Location, read_bytes

SCHEMA_VERSION = 1
FORMAT = "alae-ray-dataset"
MANIFEST = "manifest.json"
REPORT = "report.json"
PROGRESS = "_progress"
SPLITS = ("train", "test")
_TYPES = {"int64": pa.int64(), "float32": pa.float32(), "string": pa.string()}


def type_name(t: pa.DataType) -> str:
    return {v: k for k, v in _TYPES.items()}[t]


def level_dir(resolution: int, split: str) -> str:
    return f"r{resolution:04d}/{split}"


def shard_path(resolution: int, split: str, index: int) -> str:
    return f"{level_dir(resolution, split)}/part-{index:05d}.parquet"


def record_path(resolution: int, split: str, index: int) -> str:
    return f"{PROGRESS}/{level_dir(resolution, split)}/part-{index:05d}.json"


def schema_for(channels: int, resolution: int, columns: dict[str, pa.DataType]) -> pa.Schema:
    fields = [pa.field("id", pa.int64(), nullable=False), pa.field("key", pa.string(), nullable=False),
              pa.field("image", pa.binary(channels * resolution * resolution), nullable=False)]
    fields += [pa.field(k, t) for k, t in columns.items()]
    return pa.schema(fields, metadata={"alae_ray": json.dumps({"schema_version": SCHEMA_VERSION, "channels": channels, "resolution": resolution})})


def row_group_rows(width: int) -> int:
    """Rows per Parquet row group for rows of ``width`` pixel bytes: ~16 MiB, so readers stream within
    a shard, and training's blocks (``alae_ray.data.stream``) are these row groups."""
    return max(1, (16 << 20) // max(1, width))


def encode_shard(ids: np.ndarray, keys: list[str], images: np.ndarray, columns: dict[str, np.ndarray],
                 schema: pa.Schema) -> bytes:
    """A Parquet file in memory (so it is uploaded whole or not at all)."""
    n = len(ids)
    width = schema.field("image").type.byte_width
    image = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, pa.py_buffer(np.ascontiguousarray(images).reshape(-1))])
    arrays = [pa.array(ids, pa.int64()), pa.array(keys, pa.string()), image]
    arrays += [pa.array(columns[f.name], f.type) for f in list(schema)[3:]]
    table = pa.Table.from_arrays(arrays, schema=schema)
    buf = io.BytesIO()
    # No statistics or dictionary on the pixel column (min/max of image bytes would double a row
    # group's footer for nothing).
    pq.write_table(table, buf, compression="zstd", compression_level=1, row_group_size=row_group_rows(width),
                   use_dictionary=["key"], write_statistics=["id"])
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_array(column: pa.Array | pa.ChunkedArray, channels: int, resolution: int) -> np.ndarray:
    """The ``image`` column as uint8 [N, C, R, R] without copying when it is one chunk."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    width = channels * resolution * resolution
    if column.type != pa.binary(width):
        raise DatasetError(f"image column has type {column.type}, expected fixed_size_binary[{width}]")
    n = len(column)
    data = np.frombuffer(column.buffers()[1], np.uint8, count=(column.offset + n) * width)
    return data[column.offset * width:].reshape(n, channels, resolution, resolution)


@dataclass(frozen=True)
class Shard:
    path: str  # relative to the dataset root
    resolution: int
    split: str
    rows: int
    bytes: int
    sha256: str

    def to_dict(self) -> dict:
        return {"path": self.path, "resolution": self.resolution, "split": self.split,
                "rows": self.rows, "bytes": self.bytes, "sha256": self.sha256}


@dataclass(frozen=True)
class Manifest:
    """A finished dataset: what ``open_dataset`` returns and every reader takes."""

    uri: str
    name: str
    source: dict
    channels: int
    resolutions: tuple[int, ...]
    columns: dict[str, str]  # extra columns and their types ("int64", "float32")
    factors: tuple[str, ...]
    counts: dict[int, dict[str, int]]  # resolution -> split -> rows
    shards: tuple[Shard, ...]
    seed: int
    skipped: int
    created: str
    schema_version: int = SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    @property
    def max_resolution(self) -> int:
        return max(self.resolutions)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in SPLITS if any(self.counts[r].get(s, 0) for r in self.resolutions))

    def count(self, resolution: int, split: str = "train") -> int:
        self.check_level(resolution, split)
        return self.counts[resolution].get(split, 0)

    def shards_for(self, resolution: int, split: str = "train") -> list[Shard]:
        self.check_level(resolution, split)
        return [s for s in self.shards if s.resolution == resolution and s.split == split]

    def check_level(self, resolution: int, split: str) -> None:
        if resolution not in self.resolutions:
            raise DatasetError(f"{self.uri}: no level {resolution} (levels: {', '.join(map(str, self.resolutions))})")
        if split not in SPLITS:
            raise DatasetError(f"{self.uri}: no split {split!r} (splits: {', '.join(SPLITS)})")

    def schema(self, resolution: int) -> pa.Schema:
        return schema_for(self.channels, resolution, {k: _TYPES[v] for k, v in self.columns.items()})

    def to_dict(self) -> dict:
        return {"format": FORMAT, "schema_version": self.schema_version, "name": self.name,
                "source": self.source, "channels": self.channels, "resolutions": list(self.resolutions),
                "max_resolution": self.max_resolution, "pixel_format": "raw uint8 CHW (fixed_size_binary)",
                "columns": self.columns, "factors": list(self.factors),
                "counts": {str(r): self.counts[r] for r in self.resolutions}, "seed": self.seed,
                "skipped": self.skipped, "report": REPORT, "created": self.created,
                "shards": [s.to_dict() for s in self.shards], **self.extra}

    @staticmethod
    def from_dict(uri: str, d: dict) -> "Manifest":
        if d.get("format") != FORMAT:
            raise DatasetError(f"{uri}/{MANIFEST}: not an alae-ray dataset manifest")
        if int(d.get("schema_version", 0)) > SCHEMA_VERSION:
            raise DatasetError(f"{uri}: dataset schema version {d['schema_version']} is newer than this "
                               f"alae-ray supports ({SCHEMA_VERSION}); upgrade alae-ray")
        known = {"format", "schema_version", "name", "source", "channels", "resolutions", "max_resolution",
                 "pixel_format", "columns", "factors", "counts", "seed", "skipped", "report", "created", "shards"}
        return Manifest(
            uri=uri, name=d["name"], source=d["source"], channels=int(d["channels"]),
            resolutions=tuple(int(r) for r in d["resolutions"]), columns=dict(d["columns"]),
            factors=tuple(d.get("factors", ())),
            counts={int(r): {s: int(n) for s, n in c.items()} for r, c in d["counts"].items()},
            shards=tuple(Shard(**s) for s in d["shards"]), seed=int(d["seed"]), skipped=int(d["skipped"]),
            created=d["created"], schema_version=int(d["schema_version"]),
            extra={k: v for k, v in d.items() if k not in known})


def read_manifest(loc: Location) -> Manifest:
    try:
        raw = read_bytes(loc, MANIFEST)
    except DatasetError:
        raise DatasetError(f"{loc.uri}: no {MANIFEST} (not an alae-ray dataset, or `alae-ray prepare` "
                           "has not finished writing it; re-run prepare to complete it)") from None
    try:
        return Manifest.from_dict(loc.uri, json.loads(raw))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"{loc.uri_of(MANIFEST)}: malformed manifest ({exc})") from None


def check_schema(found: pa.Schema, expected: pa.Schema, where: str) -> None:
    """Raise DatasetError naming ``where`` unless ``found`` has every expected column and type."""
    problems = []
    for f in expected:
        i = found.get_field_index(f.name)
        if i < 0:
            problems.append(f"missing column {f.name!r}")
        elif found.field(i).type != f.type:
            problems.append(f"column {f.name!r} is {found.field(i).type}, expected {f.type}")
    if problems:
        raise DatasetError(f"{where}: wrong schema: {'; '.join(problems)}")


@contextmanager
def open_shard(loc: Location, rel: str):
    """A shard's file for reading; a missing or unreadable shard is a DatasetError naming it."""
    try:
        with loc.fs.open_input_file(loc.join(rel)) as f:
            yield f
    except FileNotFoundError:
        raise DatasetError(f"{loc.uri_of(rel)}: shard listed in the manifest is missing") from None
    except (OSError, pa.ArrowException) as exc:
        raise DatasetError(f"{loc.uri_of(rel)}: not a readable Parquet file ({exc})") from None


def read_shard_schema(loc: Location, rel: str) -> pa.Schema:
    with open_shard(loc, rel) as f:
        return pq.read_schema(f)

"""The training stream's order (alae_ray.data.stream): fixed blocks, per-epoch plans, exact seeks. No Ray."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from alae_ray.data import stream
from alae_ray.data.stream import Segment


@pytest.fixture(scope="module")
def shapes64(tmp_path_factory):
    """1500 images: at 64x64 the one shard has two row groups (1365 + 135 rows)."""
    from alae_ray.data import PrepareOptions, open_dataset, prepare
    from alae_ray.data.sources import shapes_source

    uri = str(tmp_path_factory.mktemp("data") / "shapes64")
    prepare(shapes_source(1500, 64, seed=0), uri, PrepareOptions(progress=False, test_count=0))
    return open_dataset(uri)


def read_all(manifest, resolution: int, segments: list[Segment], chunk: int | None = None):
    """The segments' rows in order, as pieces of ``chunk`` rows (default: one piece per segment)."""
    from alae_ray.data.reader import location

    for s in segments:
        part = stream.read_segment(location(manifest), manifest.channels, resolution, s)
        step = chunk or max(1, s.rows)
        for a in range(0, s.rows, step):
            yield {k: v[a:a + step] for k, v in part.items()}


def plan(blocks, epoch=0, rank=0, world=1, window=200, resolution=64):
    return stream.plan_epoch(blocks, seed=7, resolution=resolution, epoch=epoch, rank=rank, world=world, window=window)


def test_blocks_are_the_row_groups_prepare_writes(shapes64):
    from alae_ray.data.reader import location

    blocks = stream.blocks(shapes64, 64)
    loc = location(shapes64)
    with loc.fs.open_input_file(loc.join(blocks[0].path)) as f:
        md = pq.ParquetFile(f).metadata
    assert [b.rows for b in blocks] == [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [1365, 135]
    assert [b.rows for b in stream.blocks(shapes64, 16)] == [1500]  # small rows: one group per shard


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_each_epoch_splits_into_equal_disjoint_slices_one_per_rank(shapes64, world):
    blocks = stream.blocks(shapes64, 64)
    ids = {}
    for epoch in (0, 1):
        rows = []
        for rank in range(world):
            p = plan(blocks, epoch, rank, world)
            assert p.rows == 1500 // world == sum(s.rows for s in p.segments)
            rows.append([(s.path, r) for s in p.segments for r in range(s.start, s.stop)])
        flat = [r for rank_rows in rows for r in rank_rows]
        assert len(set(flat)) == len(flat) == world * (1500 // world)  # no row twice in an epoch
        ids[epoch] = rows
    assert ids[0] != ids[1]  # each epoch a new order (and for world > 1, new slices)


def test_from_any_row_the_rest_of_the_epoch_is_the_same(shapes64):
    """The seek a resume does: reading from a window's start gives exactly the batches a run that
    never stopped takes from that row, whatever size the pieces arrive in."""
    p = plan(stream.blocks(shapes64, 64), epoch=3, rank=1, world=2, window=200)
    n = 24
    whole = list(stream.batches(p, 0, read_all(shapes64, 64, list(p.segments), chunk=97), n))
    assert len(whole) == p.rows // n == 31
    taken_ids = np.concatenate([b["id"] for b in whole])
    read_ids = np.concatenate([c["id"] for c in read_all(shapes64, 64, list(p.segments))])[:len(taken_ids)]
    assert not np.array_equal(taken_ids, read_ids)  # permuted within windows ...
    np.testing.assert_array_equal(np.sort(taken_ids[:200]), np.sort(read_ids[:200]))  # ... not across them
    for taken in (1, 8, 9, 16, 30):
        segments, start = p.from_row(taken * n)
        assert start == taken * n // 200 * 200 and sum(s.rows for s in segments) == p.rows - start
        rest = list(stream.batches(p, taken * n, read_all(shapes64, 64, segments), n))
        assert len(rest) == len(whole) - taken
        for got, want in zip(rest, whole[taken:]):
            np.testing.assert_array_equal(got["id"], want["id"])
            np.testing.assert_array_equal(got["image"], want["image"])


def test_short_data_is_an_error_not_a_short_epoch(shapes64):
    p = plan(stream.blocks(shapes64, 64))
    short = read_all(shapes64, 64, list(p.segments)[:1])
    with pytest.raises(stream.DatasetError, match="rows short of window"):
        list(stream.batches(p, 0, short, 16))


def test_a_segment_reads_across_row_groups_of_any_size(tmp_path):
    """Datasets written with other row groups (older versions, other tools) read the same rows."""
    import pyarrow as pa

    from alae_ray.data.storage import resolve

    images = np.random.default_rng(0).integers(0, 256, (50, 1, 2, 2), dtype=np.uint8)
    table = pa.table({"id": np.arange(50, dtype=np.int64),
                      "image": pa.array([im.tobytes() for im in images], pa.binary(4))})
    pq.write_table(table, tmp_path / "part.parquet", row_group_size=7)
    loc = resolve(str(tmp_path))
    got = stream.read_segment(loc, 1, 2, Segment("part.parquet", 12, 41))
    np.testing.assert_array_equal(got["id"], np.arange(12, 41))
    np.testing.assert_array_equal(got["image"], images[12:41])
    with pytest.raises(stream.DatasetError, match="has 50 rows"):
        stream.read_segment(loc, 1, 2, Segment("part.parquet", 40, 60))
    with pytest.raises(stream.DatasetError, match="missing"):
        stream.read_segment(loc, 1, 2, Segment("gone.parquet", 0, 1))

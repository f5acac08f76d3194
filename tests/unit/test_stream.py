"""The training stream's order (alae_ray.data.stream): fixed blocks, per-epoch plans, exact seeks. No Ray."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from alae_ray.core.schedule import split_streams
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


def plan(blocks, epoch=0, v=0, streams=1, window=200, resolution=64):
    return stream.plan_epoch(blocks, seed=7, resolution=resolution, epoch=epoch, stream=v, streams=streams,
                             window=window)


def test_blocks_are_the_row_groups_prepare_writes(shapes64):
    from alae_ray.data.reader import location

    blocks = stream.blocks(shapes64, 64)
    loc = location(shapes64)
    with loc.fs.open_input_file(loc.join(blocks[0].path)) as f:
        md = pq.ParquetFile(f).metadata
    assert [b.rows for b in blocks] == [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [1365, 135]
    assert [b.rows for b in stream.blocks(shapes64, 16)] == [1500]  # small rows: one group per shard


@pytest.mark.parametrize("streams", [1, 2, 3, 7])
def test_each_epoch_splits_into_equal_disjoint_slices_one_per_stream(shapes64, streams):
    blocks = stream.blocks(shapes64, 64)
    ids = {}
    for epoch in (0, 1):
        rows = []
        for v in range(streams):
            p = plan(blocks, epoch, v, streams)
            assert p.rows == 1500 // streams == sum(s.rows for s in p.segments)
            rows.append([(s.path, r) for s in p.segments for r in range(s.start, s.stop)])
        flat = [r for stream_rows in rows for r in stream_rows]
        assert len(set(flat)) == len(flat) == streams * (1500 // streams)  # no row twice in an epoch
        ids[epoch] = rows
    assert ids[0] != ids[1]  # each epoch a new order (and for several streams, new slices)


def test_from_any_row_the_rest_of_the_epoch_is_the_same(shapes64):
    """The seek a resume does: reading from a window's start gives exactly the batches a run that
    never stopped takes from that row, whatever size the pieces arrive in."""
    p = plan(stream.blocks(shapes64, 64), epoch=3, v=1, streams=2, window=200)
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


STREAMS = 4


def worker_batches(manifest, workers: int, row: int = 0, epoch: int = 2, batch: int = 24, window: int = 50,
                   chunk: int | None = 61):
    """Each worker's batches of one epoch from ``row`` of every stream (its reads in pieces of ``chunk``
    rows), and its reads, as ``alae-ray train``'s workers take them."""
    out = []
    for rank in range(workers):
        work = stream.WorkerPlan(tuple(plan(stream.blocks(manifest, 64), epoch, v, STREAMS, window)
                                       for v in split_streams(STREAMS, rank, workers)))
        reads = work.reads(row)
        chunks = read_all(manifest, 64, [s for _, s in reads], chunk=chunk)
        out.append((list(work.batches(row, chunks, batch * len(work.plans) // STREAMS)), reads))
    return out


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_any_worker_count_reads_the_same_rows_in_the_same_batches(shapes64, workers):
    """Global batch k is the same rows, in the same order, with 1, 2, 3 or 4 workers (3: shares of 1,
    1 and 2 of the 4 streams): the workers' batches side by side in rank order are the one worker's."""
    (alone, _), = worker_batches(shapes64, 1)
    shared = worker_batches(shapes64, workers)
    assert len(alone) == 1500 // STREAMS // (24 // STREAMS) == 62
    for k, want in enumerate(alone):
        got = [batches[k] for batches, _ in shared]
        assert [len(g["id"]) for g in got] == [24 * len(split_streams(STREAMS, r, workers)) // STREAMS
                                               for r in range(workers)]
        np.testing.assert_array_equal(np.concatenate([g["id"] for g in got]), want["id"])
        np.testing.assert_array_equal(np.concatenate([g["image"] for g in got]), want["image"])
    assert len(np.unique(np.concatenate([b["id"] for b in alone]))) == 62 * 24  # no row twice


def test_a_resume_at_another_worker_count_is_exact(shapes64):
    """Two workers stop after 20 batches (rows 120 of each stream); one worker goes on from there and
    takes exactly the batches an uninterrupted run takes."""
    (alone, _), = worker_batches(shapes64, 1)
    (rest, _), = worker_batches(shapes64, 1, row=20 * (24 // STREAMS))
    assert len(rest) == len(alone) - 20
    for got, want in zip(rest, alone[20:]):
        np.testing.assert_array_equal(got["id"], want["id"])


def test_a_worker_reads_each_block_once_in_the_order_its_streams_need_them(shapes64):
    """The reads cover each stream's rows from its window once, never a row twice; a stream's
    window k is read before any stream's window k + 1 is needed."""
    ((_, reads),) = worker_batches(shapes64, 1)
    rows = [(s.path, r) for _, s in reads for r in range(s.start, s.stop)]
    assert len(rows) == len(set(rows)) == STREAMS * (1500 // STREAMS)
    have = [0] * STREAMS
    for i, s in reads:  # a stream is at most one read ahead of the slowest
        assert have[i] - min(have) < 50 + 1365, (i, have)
        have[i] += s.rows


def test_default_streams_divide_every_batch():
    assert stream.default_streams([512, 256, 32]) == 32 and stream.default_streams([32, 16]) == 16
    assert stream.default_streams([48, 24]) == 24 and stream.default_streams([96]) == 32
    assert stream.default_streams([12, 18]) == 6


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


def test_a_position_in_another_order_starts_its_epoch_again(shapes64):
    """A worker restores a position taken in the same streams as it is; one from another order (a
    checkpoint from before the data streams, or of other streams) keeps its level and epoch and reads
    that epoch from its start rather than from a row that means something else there."""
    from alae_ray.core.config import load_config
    from alae_ray.train.worker import ShardStream

    model = load_config("tiny").model
    data = ShardStream(shapes64.uri, 0, rank=1, world=2, streams=4, flip=False, buffer=64, data_resolution=None,
                       model=model)
    assert data.mine == range(2, 4)
    data.load_state_dict({"resolution": 64, "epoch": 3, "rows": 120, "streams": 4})
    assert data.state_dict() == {"resolution": 64, "epoch": 3, "rows": 120, "streams": 4}
    data.load_state_dict({"resolution": 64, "epoch": 3, "rows": 240})  # written before the data streams
    assert data.state_dict() == {"resolution": 64, "epoch": 3, "rows": 0, "streams": 4}

"""Reading prepared datasets from the S3 server through Ray Data: counts, pixels, shuffles, shards."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from alae_ray.data import (
    DatasetError,
    PrepareOptions,
    open_dataset,
    open_source,
    prepare,
    read_level_numpy,
    to_tensor_batch,
)
from alae_ray.data.storage import resolve

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def faces(s3_bucket_factory, shared_data):
    """faces128 at 32x32 on S3, 16 held out (130 train rows: two workers split it evenly)."""
    uri = f"{s3_bucket_factory('rayfaces')}/faces"
    prepare(open_source(str(shared_data / "faces128"), resolution=32), uri,
            PrepareOptions(progress=False, test_count=16, shard_rows=32))
    return open_dataset(uri)


def _rows(ds, batch_size: int = 50) -> dict[str, np.ndarray]:
    parts = list(ds.iter_batches(batch_size=batch_size, batch_format="numpy"))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_levels_through_ray_match_source_rows(ray_local, faces):
    from alae_ray.data.ray_reader import level_dataset

    for r in (32, 4):
        ref = read_level_numpy(faces, r, "train")
        got = _rows(level_dataset(faces, r, "train"))
        assert len(got["id"]) == faces.count(r, "train") == 130
        o, p = np.argsort(got["id"]), np.argsort(ref["id"])
        assert np.array_equal(got["id"][o], ref["id"][p])
        assert got["image"].dtype == np.uint8 and got["image"].shape == (130, 3, r, r)
        assert np.array_equal(got["image"][o], ref["image"][p])
        assert list(got["key"][o]) == list(ref["key"][p])
    test = _rows(level_dataset(faces, 8, "test", shuffle="none"))
    assert sorted(test["id"]) == sorted(read_level_numpy(faces, 8, "test")["id"]) and len(test["id"]) == 16
    x = to_tensor_batch(test, flip=True)
    assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1


def test_every_epoch_is_a_new_shuffle_of_all_rows(ray_local, faces):
    from alae_ray.data.ray_reader import level_dataset

    for seed in (None, 7):
        ds = level_dataset(faces, 16, "train", seed=seed)
        epochs = [list(_rows(ds)["id"]) for _ in range(2)]
        assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(read_level_numpy(faces, 16, "train")["id"])
        assert len(set(epochs[0])) == 130
        assert epochs[0] != epochs[1]
    again = [list(_rows(level_dataset(faces, 16, "train", seed=7))["id"]) for _ in range(2)]
    assert again[0] == epochs[0]  # a seed makes the sequence of epoch orders reproducible


def test_each_stream_reads_its_slice_from_s3_in_the_planned_order(ray_local, faces):
    """What a training worker iterates each epoch: its segments as a Ray Dataset, in order."""
    from ray.data import DataContext

    from alae_ray.data import stream
    from alae_ray.data.ray_reader import segments_dataset
    from alae_ray.data.reader import location

    DataContext.get_current().execution_options.preserve_order = True
    blocks = stream.blocks(faces, 32)
    seen = []
    for rank in range(2):
        plan = stream.plan_epoch(blocks, seed=3, resolution=32, epoch=1, stream=rank, streams=2, window=40)
        got = {k: np.concatenate([b[k] for b in segments_dataset(faces, 32, list(plan.segments)).iter_batches(
            batch_size=None, batch_format="numpy")]) for k in ("id", "image")}
        here = [stream.read_segment(location(faces), 3, 32, s) for s in plan.segments]
        np.testing.assert_array_equal(got["id"], np.concatenate([h["id"] for h in here]))
        np.testing.assert_array_equal(got["image"], np.concatenate([h["image"] for h in here]))
        assert got["image"].shape == (65, 3, 32, 32)
        seen.append(set(got["id"].tolist()))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(read_level_numpy(faces, 32, "train")["id"].tolist())


def test_mnist_level_through_ray(ray_local, s3_bucket, shared_data):
    from alae_ray.data.ray_reader import level_dataset

    uri = f"{s3_bucket}/mnist"
    m = prepare(open_source(str(shared_data / "mnist-t10k")), uri, PrepareOptions(progress=False))
    assert m.resolutions == (28,)  # MNIST: one level
    rows = _rows(level_dataset(uri, 28, "test"), batch_size=256)
    assert len(rows["id"]) == 1000 and rows["image"].shape == (1000, 1, 28, 28)
    assert set(rows["label"].tolist()) == set(range(10))
    assert to_tensor_batch(rows).flatten(1).shape == (1000, 784)  # what the MLP model takes


def test_wrong_schema_fails_before_reading(ray_local, s3_bucket, shared_data):
    from alae_ray.data.ray_reader import level_dataset

    uri = f"{s3_bucket}/bad"
    m = prepare(open_source(str(shared_data / "faces128"), resolution=8), uri, PrepareOptions(progress=False))
    shard = m.shards_for(4, "train")[0]
    loc = resolve(uri)
    buf = pa.BufferOutputStream()
    bad = pa.table({"id": [1], "key": ["a"], "image": pa.array([b"\x00" * 3 * 8 * 8], pa.binary(3 * 8 * 8))})
    pq.write_table(bad, buf)
    with loc.fs.open_output_stream(loc.join(shard.path)) as f:
        f.write(buf.getvalue())
    with pytest.raises(DatasetError, match=f"{uri}/{shard.path}: wrong schema: column 'image'"):
        level_dataset(m, 4, "train")
    level_dataset(m, 8, "train")  # other levels are untouched
    with pytest.raises(DatasetError, match="no level 64"):
        level_dataset(m, 64, "train")

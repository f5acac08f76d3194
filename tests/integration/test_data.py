"""Datasets without Ray: preparation to a real S3 server, the NumPy reader, bad input, resume, CLI."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from alae_ray.cli import main
from alae_ray.data import (
    DatasetError,
    PrepareOptions,
    iter_level_batches,
    open_dataset,
    open_source,
    prepare,
    read_level_numpy,
    synthetic,
    to_tensor_batch,
    verify,
)
from alae_ray.data.idx import load_mnist
from alae_ray.data.images import pyramid
from alae_ray.data.storage import resolve

QUIET = PrepareOptions(progress=False)


def _box(x: np.ndarray, k: int) -> np.ndarray:
    """Reference k x k area average of uint8 HWC, in float (independent of the code under test)."""
    h, w, c = x.shape
    return x.reshape(h // k, k, w // k, k, c).astype(np.float64).mean(axis=(1, 3))


def _torch_down(x: np.ndarray) -> np.ndarray:
    return torch.round(F.avg_pool2d(torch.from_numpy(x).float(), 2)).to(torch.uint8).numpy()


def _assert_levels_consistent(m, split: str) -> None:
    res = sorted(m.resolutions, reverse=True)
    data = {r: read_level_numpy(m, r, split) for r in res}
    for hi, lo in zip(res, res[1:]):
        a, b = data[hi], data[lo]
        oa, ob = np.argsort(a["id"]), np.argsort(b["id"])
        assert np.array_equal(a["id"][oa], b["id"][ob])
        diff = np.abs(_torch_down(a["image"][oa]).astype(int) - b["image"][ob].astype(int))
        assert diff.max() <= 1, f"level {lo} is not the area-downsampled level {hi}"


@pytest.fixture(scope="module")
def faces_s3(s3_bucket_factory, shared_data):
    """faces128 prepared at 32x32 into a bucket (shared by the tests below)."""
    uri = f"{s3_bucket_factory('faces')}/faces128-r32"
    src = open_source(str(shared_data / "faces128"), resolution=32)
    prepare(src, uri, PrepareOptions(progress=False, shard_rows=40, seed=3))
    return uri


def test_pyramid_equals_torch_avg_pool():
    x = np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    levels = pyramid(x, [4, 8, 16, 32])
    for r in (16, 8, 4):
        assert np.array_equal(levels[r], _torch_down(levels[2 * r]))


def test_shapes_factors_are_ground_truth():
    idx = np.array([7, 3, 11, 0, 5])
    a, fa = synthetic.generate(idx, 64, seed=1)
    b, fb = synthetic.generate(idx[::-1], 64, seed=1)
    assert np.array_equal(a, b[::-1]) and np.array_equal(fa["hue"], fb["hue"][::-1])  # item = f(seed, index)
    assert not np.array_equal(a, synthetic.generate(idx, 64, seed=2)[0])
    for k, (lo, hi) in synthetic.RANGES.items():
        assert np.all(fa[k] >= lo) and np.all(fa[k] < hi)
    for i in range(len(idx)):
        mask = a[i].max(0).astype(float)
        ys, xs = np.nonzero(mask)
        w = mask[ys, xs]
        # Every shape outline is centred on its position, so the centroid is the position.
        assert abs((xs * w).sum() / w.sum() + 0.5 - fa["pos_x"][i] * 64) < 1.5
        assert abs((ys * w).sum() / w.sum() + 0.5 - fa["pos_y"][i] * 64) < 1.5
        hue_channel = int(np.argmax(np.array([np.cos(2 * np.pi * (fa["hue"][i] - c / 3)) for c in range(3)])))
        assert a[i][hue_channel].max() == a[i].max()  # the dominant channel follows the hue
    big = dict(synthetic.sample_factors(0, 1), scale=0.3)
    small = dict(big, scale=0.15)
    area = lambda f: synthetic.render(f, 32).astype(float).max(0).sum()  # noqa: E731
    assert 3.5 < area(big) / area(small) < 4.5  # area grows with scale squared


def test_faces_to_s3_counts_pixels_levels(faces_s3, shared_data):
    m = open_dataset(faces_s3)
    assert m.resolutions == (4, 8, 16, 32) and m.channels == 3 and m.skipped == 0
    sources = sorted(p.name for p in (shared_data / "faces128").glob("*.png"))
    for r in m.resolutions:
        assert m.count(r, "train") + m.count(r, "test") == len(sources) == 146
        assert m.count(r, "test") == 15  # round(146 * 0.1)
    train, test = read_level_numpy(faces_s3, 32, "train"), read_level_numpy(faces_s3, 32, "test")
    assert not set(train["id"]) & set(test["id"])
    assert sorted(np.concatenate([train["id"], test["id"]])) == list(range(146))
    assert sorted(np.concatenate([train["key"], test["key"]])) == sources
    for data in (train, test):
        for key, img in zip(data["key"], data["image"]):
            src = np.asarray(Image.open(shared_data / "faces128" / key).convert("RGB"))
            assert np.abs(img.transpose(1, 2, 0).astype(float) - _box(src, 4)).max() <= 1.0, key
    _assert_levels_consistent(m, "train")
    _assert_levels_consistent(m, "test")
    assert verify(m) == {"ok": True, "checked": len(m.shards), "bad": []}


def test_split_is_deterministic_and_configurable(tmp_path, shared_data):
    src = open_source(str(shared_data / "faces128"), resolution=8)
    a = prepare(src, str(tmp_path / "a"), PrepareOptions(progress=False, test_count=40, seed=5))
    b = prepare(src, str(tmp_path / "b"), PrepareOptions(progress=False, test_count=40, seed=5))
    c = prepare(src, str(tmp_path / "c"), PrepareOptions(progress=False, test_count=40, seed=6))
    assert a.count(8, "test") == 40 and a.count(8, "train") == 106
    ids = lambda m: set(read_level_numpy(m, 8, "test")["id"])  # noqa: E731
    assert ids(a) == ids(b) != ids(c)
    assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]  # byte-identical output


def test_cli_mnist_to_s3_and_info(s3_bucket, shared_data, capsys):
    uri = f"{s3_bucket}/mnist"
    assert main(["prepare", str(shared_data / "mnist-t10k"), uri, "--quiet", "--test-count", "1000"]) == 0
    capsys.readouterr()
    assert main(["data", "info", uri, "--json", "--verify"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["resolutions"] == [28] and info["channels"] == 1
    assert info["counts"] == {"28": {"train": 9000, "test": 1000}}
    assert info["verify"]["ok"] and info["verify"]["checked"] == info["shards"] >= 2
    assert main(["data", "info", uri]) == 0
    assert "9000" in capsys.readouterr().out
    images, labels = load_mnist(shared_data / "mnist-t10k", "t10k")
    for split in ("train", "test"):
        d = read_level_numpy(uri, 28, split)
        assert d["image"].shape == (len(d["id"]), 1, 28, 28) and d["image"].dtype == np.uint8
        assert np.array_equal(d["image"][:, 0], images[d["id"]])
        assert np.array_equal(d["label"], labels[d["id"]])
        assert list(d["key"][:1]) == [f"t10k/{d['id'][0]:05d}"]
    x = to_tensor_batch(next(iter_level_batches(uri, 28, "train", 128, seed=0)))
    assert x.shape == (128, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0  # MNIST has both pure black and pure white


def _png16_rgb(path: Path, rgb: tuple[int, int, int], size: int) -> None:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one)."""
    row = b"\x00" + struct.pack(">3H", *rgb) * size
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    ihdr = struct.pack(">IIBBBBB", size, size, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row * size)) + chunk(b"IEND", b""))


def _plant_bad_folder(folder: Path, face: Path) -> None:
    folder.mkdir()
    rgb = Image.open(face).convert("RGB").resize((64, 64), Image.Resampling.BOX)
    rgb.save(folder / "good.png")
    rgb.save(folder / "good.webp", lossless=True)
    (folder / "nested" / "deeper").mkdir(parents=True)
    rgb.save(folder / "nested" / "deeper" / "upper.JPG", quality=95)
    data = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "text.jpg").write_text("this is not a JPEG\n")
    (folder / "notes.txt").write_text("not an image extension: ignored\n")
    rgb.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    Image.fromarray(np.full((64, 64), 40000, np.uint16)).save(folder / "gray16.png")
    _png16_rgb(folder / "rgb16.png", (65535, 32896, 0), 64)
    Image.new("RGB", (16, 16), (10, 200, 30)).save(folder / "tiny.png")
    rgb.quantize(64).save(folder / "palette.png")
    rgb.convert("L").save(folder / "gray.png")
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[:, 32:] = (255, 0, 0, 255)  # left half fully transparent black
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    wide = np.zeros((64, 96, 3), np.uint8)
    wide[:, :16], wide[:, 16:80], wide[:, 80:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    Image.fromarray(wide).save(folder / "wide.png")


def test_bad_and_odd_images_follow_policy(tmp_path, shared_data, capsys):
    face = sorted((shared_data / "faces128").glob("*.png"))[0]
    _plant_bad_folder(tmp_path / "src", face)
    uri = str(tmp_path / "ds")
    assert main(["prepare", str(tmp_path / "src"), uri, "--resolution", "32", "--test-count", "0", "--quiet"]) == 0
    assert "3 source file(s) skipped" in capsys.readouterr().out
    report = json.loads((tmp_path / "ds" / "report.json").read_text())
    assert report["items"] == 13  # notes.txt is not an image file
    assert {s["key"]: s["reason"] for s in report["skipped"]} == {
        "truncated.png": "corrupt", "text.jpg": "corrupt", "tiny.png": "too_small"}
    assert report["skipped_by_reason"] == {"corrupt": 2, "too_small": 1}
    notes = {n["key"]: n for n in report["converted"]}
    assert {k: notes[k]["mode"] for k in ("cmyk.jpg", "gray16.png", "palette.png", "gray.png", "rgba.png")} == {
        "cmyk.jpg": "CMYK", "gray16.png": "I;16", "palette.png": "P", "gray.png": "L", "rgba.png": "RGBA"}
    assert notes["wide.png"]["cropped"] is True
    d = read_level_numpy(uri, 32, "train")
    rows = {k: img.transpose(1, 2, 0).astype(int) for k, img in zip(d["key"], d["image"])}
    assert sorted(rows) == sorted(["good.png", "good.webp", "nested/deeper/upper.JPG", "cmyk.jpg", "gray16.png",
                                   "rgb16.png", "palette.png", "gray.png", "rgba.png", "wide.png"])
    ref = _box(np.asarray(Image.open(tmp_path / "src" / "good.png")), 2)
    assert np.abs(rows["good.png"] - ref).max() <= 1 and np.abs(rows["good.webp"] - ref).max() <= 1
    assert np.abs(rows["nested/deeper/upper.JPG"] - ref).mean() < 4  # JPEG is lossy
    assert np.abs(rows["cmyk.jpg"] - ref).mean() < 6  # naive CMYK -> RGB, lossy
    assert np.abs(rows["palette.png"] - ref).mean() < 8  # 64-colour quantization
    assert (rows["gray16.png"] == 156).all()  # round(40000 / 257), not clipped to 255
    assert (rows["rgb16.png"] == (255, 128, 0)).all()
    gray = rows["gray.png"]
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert (rows["rgba.png"][:, :16] == 255).all()  # transparent over white
    assert (rows["rgba.png"][:, 16:] == (255, 0, 0)).all()
    assert (rows["wide.png"] == (0, 255, 0)).all()  # centre crop keeps the middle square only
    # The upscale policy keeps the small image instead.
    assert main(["prepare", str(tmp_path / "src"), str(tmp_path / "up"), "--resolution", "32",
                 "--test-count", "0", "--small", "upscale", "--quiet"]) == 0
    up = read_level_numpy(str(tmp_path / "up"), 32, "train")
    tiny = up["image"][list(up["key"]).index("tiny.png")]
    assert np.abs(tiny.transpose(1, 2, 0).astype(int) - (10, 200, 30)).max() <= 1
    assert json.loads((tmp_path / "up" / "report.json").read_text())["skipped_by_reason"] == {"corrupt": 2}


class Interrupt(Exception):
    pass


def _shard_versions(endpoint: str, uri: str) -> dict[str, list[str]]:
    """The S3 version ids of each shard under ``uri`` (the bucket keeps every write: a rewrite of a
    shard shows as a second version, with no clock involved)."""
    import boto3

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=endpoint)
    versions: dict[str, list[str]] = {}
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for v in page.get("Versions", []):
            if v["Key"].endswith(".parquet"):
                versions.setdefault(v["Key"][len(prefix) + 1:], []).append(v["VersionId"])
    return versions


def test_interrupted_prepare_resumes_without_rewriting(s3_server, s3_bucket, shared_data):
    import boto3

    boto3.client("s3", endpoint_url=s3_server).put_bucket_versioning(
        Bucket=s3_bucket.removeprefix("s3://"), VersioningConfiguration={"Status": "Enabled"})
    src = open_source(str(shared_data / "faces128"), resolution=16)
    opts = PrepareOptions(progress=False, shard_rows=16)
    uri = f"{s3_bucket}/resumed"
    written: list[str] = []

    def fail_after_4(path: str) -> None:
        written.append(path)
        if len(written) == 4:
            raise Interrupt("injected failure after 4 shards")

    with pytest.raises(Interrupt):
        prepare(src, uri, opts, on_shard=fail_after_4)
    with pytest.raises(DatasetError, match="no manifest.json"):
        open_dataset(uri)  # a half-written dataset is never taken for a finished one
    before = _shard_versions(s3_server, uri)
    assert sorted(before) == sorted(written) and len(before) == 4
    rewritten: list[str] = []
    m = prepare(src, uri, opts, on_shard=rewritten.append)
    assert not set(rewritten) & set(written)
    after = _shard_versions(s3_server, uri)
    assert all(after[p] == before[p] for p in before)  # the same single version: never written again
    assert all(len(after[p]) == 1 for p in rewritten)
    assert len(m.shards) == len(written) + len(rewritten) == len(after)
    fresh = prepare(src, f"{s3_bucket}/straight", opts)  # the same dataset, uninterrupted
    assert [(s.path, s.sha256) for s in m.shards] == [(s.path, s.sha256) for s in fresh.shards]
    assert verify(m)["ok"]
    assert prepare(src, uri, opts, on_shard=rewritten.append).shards == m.shards  # finished: a no-op
    with pytest.raises(DatasetError, match="other options"):
        prepare(src, uri, PrepareOptions(progress=False, shard_rows=16, seed=9))


def test_iter_batches_and_tensors(faces_s3):
    epochs = [[i for b in iter_level_batches(faces_s3, 8, "train", 32, seed=e) for i in b["id"]] for e in (0, 1)]
    assert sorted(epochs[0]) == sorted(epochs[1]) and len(set(epochs[0])) == 131
    assert epochs[0] != epochs[1]
    batch = next(iter_level_batches(faces_s3, 8, "train", 64, seed=0))
    x = to_tensor_batch(batch)
    assert x.shape == (64, 3, 8, 8) and x.dtype == torch.float32
    assert torch.allclose(x, torch.from_numpy(batch["image"]).float() / 127.5 - 1)
    assert -1 <= x.min() and x.max() <= 1
    y = to_tensor_batch(batch, flip=True, epoch=0)
    flipped = [bool(torch.equal(y[i], x[i].flip(-1)) and not torch.equal(y[i], x[i])) for i in range(64)]
    kept = [bool(torch.equal(y[i], x[i])) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept)) and 15 < sum(flipped) < 49
    # training's rule: chosen per (row id, epoch), so the same rows flip in any batch order
    order = np.arange(64)[::-1].copy()
    assert torch.equal(to_tensor_batch({k: v[order] for k, v in batch.items()}, flip=True, epoch=0), y[order])
    assert not torch.equal(to_tensor_batch(batch, flip=True, epoch=1), y)
    with pytest.raises(ValueError, match="id"):
        to_tensor_batch(batch["image"], flip=True)


def test_half_the_rows_flip_each_epoch():
    from alae_ray.core.pixels import mirror

    x = torch.arange(2).view(1, 1, 1, 2).expand(10_000, 1, 1, 2)  # row i flipped: [1, 0]
    flips = [mirror(x, np.arange(10_000), epoch)[:, 0, 0, 0] == 1 for epoch in range(3)]
    assert all(0.48 < float(f.float().mean()) < 0.52 for f in flips)
    assert torch.equal(flips[0], mirror(x, np.arange(10_000), 0)[:, 0, 0, 0] == 1)
    assert not torch.equal(flips[0], flips[1])  # another epoch, other rows


def test_wrong_schema_parquet_fails_naming_the_file(s3_bucket, shared_data, capsys):
    uri = f"{s3_bucket}/ds"
    prepare(open_source(str(shared_data / "faces128"), resolution=8), uri, QUIET)
    m = open_dataset(uri)
    shard = m.shards_for(8, "train")[0]
    loc = resolve(uri)
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"id": pa.array([1, 2]), "pixels": pa.array([b"x", b"y"])}), buf)
    with loc.fs.open_output_stream(loc.join(shard.path)) as f:
        f.write(buf.getvalue())
    with pytest.raises(DatasetError, match=f"{uri}/{shard.path}: wrong schema: missing column 'key'"):
        read_level_numpy(uri, 8, "train")
    assert main(["data", "info", uri, "--verify"]) == 1
    err = capsys.readouterr().err
    assert f"{uri}/{shard.path}" in err and "sha256 mismatch" in err


def test_missing_bucket_prefix_and_credentials(s3_server, s3_bucket, shared_data, capsys, monkeypatch):
    assert main(["data", "info", "s3://no-such-bucket-x1/ds"]) == 2
    assert "s3://no-such-bucket-x1/ds: bucket 'no-such-bucket-x1' does not exist" in capsys.readouterr().err
    assert main(["prepare", "shapes", "s3://no-such-bucket-x1/ds", "--count", "8", "--quiet"]) == 2
    assert "s3://no-such-bucket-x1/ds: bucket" in capsys.readouterr().err
    assert main(["data", "info", f"{s3_bucket}/nothing/here"]) == 2
    assert f"{s3_bucket}/nothing/here: no manifest.json" in capsys.readouterr().err
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert main(["prepare", "shapes", f"{s3_bucket}/ds", "--count", "8", "--quiet"]) == 2
    assert f"{s3_bucket}/ds: no AWS credentials found" in capsys.readouterr().err
    assert main(["data", "info", f"{s3_bucket}/ds"]) == 2
    assert "no AWS credentials" in capsys.readouterr().err
    assert main(["prepare", str(shared_data / "nope"), "/tmp/x"]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_shapes_dataset_stores_factors(tmp_path):
    uri = str(tmp_path / "shapes")
    assert main(["prepare", "shapes", uri, "--count", "64", "--resolution", "16", "--quiet", "--seed", "2"]) == 0
    m = open_dataset(uri)
    assert m.factors == synthetic.FACTORS and m.resolutions == (4, 8, 16)
    d = read_level_numpy(m, 16, "train")
    _, cols = synthetic.generate(d["id"], 16, seed=2)
    for k in synthetic.FACTORS:
        assert np.array_equal(d[k], cols[k])
    assert np.array_equal(d["label"], d["shape"])
    assert np.array_equal(d["image"], synthetic.generate(d["id"], 16, seed=2)[0])
    _assert_levels_consistent(m, "test")


def test_first_rows_read_only_the_shards_they_are_in(tmp_path, monkeypatch):
    """A fixed sample batch from a 1024x1024 level must not read the whole split (tens of GB)."""
    from alae_ray.data import reader
    from alae_ray.data.sources import shapes_source

    uri = str(tmp_path / "shapes")
    prepare(shapes_source(300, 8, seed=0), uri, PrepareOptions(progress=False, shard_rows=64))
    m = open_dataset(uri)
    assert len(m.shards_for(8, "train")) > 2
    read = []
    original = reader._read_shard
    monkeypatch.setattr(reader, "_read_shard", lambda loc, man, shard: read.append(shard.path) or original(loc, man, shard))
    first = reader.read_first_rows(m, 8, "train", 8)
    assert first["image"].shape == (8, 3, 8, 8) and len(read) == 1
    assert np.array_equal(first["image"], reader.read_level_numpy(m, 8, "train")["image"][:8])
    read.clear()
    rows = m.shards_for(8, "train")[0].rows
    assert len(reader.read_first_rows(m, 8, "train", rows + 1)["image"]) == rows + 1 and len(read) == 2


def test_mnist_at_32_is_zero_padded_with_levels_and_holds_out_the_judged_digits(shared_data, tmp_path, capsys):
    """`prepare --resolution 32` of t10k alone: the authors' StyleALAE MNIST layout (28x28 padded by 2,
    levels 4..32), and t10k[8000:] held out: the digits the digits judge scores."""
    uri = str(tmp_path / "mnist32")
    assert main(["prepare", str(shared_data / "mnist-t10k"), uri, "--resolution", "32", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["data", "info", uri, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["resolutions"] == [4, 8, 16, 32] and info["channels"] == 1
    assert info["counts"]["32"] == {"train": 8000, "test": 2000}
    images, labels = load_mnist(shared_data / "mnist-t10k", "t10k")
    test = read_level_numpy(uri, 32, "test")
    assert sorted(test["id"]) == list(range(8000, 10000))
    assert np.array_equal(test["image"][:, 0, 2:-2, 2:-2], images[test["id"]]) and test["image"][:, :, :2].max() == 0
    assert np.array_equal(test["label"], labels[test["id"]])
    assert read_level_numpy(uri, 4, "train")["image"].shape[1:] == (1, 4, 4)
    assert main(["prepare", str(shared_data / "mnist-t10k"), str(tmp_path / "m64"), "--resolution", "64", "--quiet"]) != 0
    assert "native 28x28 or zero-padded to 32x32 (--resolution 32, for a StyleALAE), not 64" in capsys.readouterr().err
    assert not (tmp_path / "m64").exists()

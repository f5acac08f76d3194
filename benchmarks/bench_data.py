"""Images per second delivered to a training consumer: S3 (moto server) through Ray Data vs local
Parquet read with pyarrow, at several levels.

    .venv/bin/python benchmarks/bench_data.py [--copies 10] [--levels 8 32 128 256]

Builds a dataset of ``bedroom256 x copies`` distinct images (each copy flipped and/or cropped
and resized back), prepares it to a local folder, uploads the same shards to a moto S3 server
started as a subprocess on loopback, then times, per level, a consumer that turns every batch
into a float tensor in [-1, 1] with training's flips, per (row id, epoch) (``to_tensor_batch``):

- local pyarrow: ``iter_level_batches`` over the local shards (no Ray)
- S3 pyarrow: the same over ``s3://`` (no Ray)
- S3 Ray "files": ``level_dataset(shuffle="files")`` + ``iter_batches(local_shuffle_buffer_size=...)``
- S3 Ray "rows": ``level_dataset(shuffle="rows")`` (full random shuffle per epoch)

Throughput is over the whole pass including Ray's start-up (the first-batch latency is shown
separately), images counted at the consumer.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alae_ray.data import PrepareOptions, iter_level_batches, open_dataset, prepare, to_tensor_batch  # noqa: E402
from alae_ray.data.sources import Loaded, Source  # noqa: E402

BEDROOMS = ROOT.parent / "shared" / "data" / "bedroom256"


def replicated_source(copies: int) -> Source:
    """bedroom256 x copies, each copy a different flip/crop so no two rows are identical bytes."""
    base = [Image.open(p).convert("RGB") for p in sorted(BEDROOMS.glob("*.png"))]
    keys = [f"copy{c:02d}/{i:04d}" for c in range(copies) for i in range(len(base))]

    def variant(c: int, im: Image.Image) -> np.ndarray:
        if c % 2:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if c >= 2:
            m = 4 * (c // 2)
            im = im.crop((m, m // 2, 256 - m // 2, 256 - m)).resize((256, 256), Image.Resampling.BICUBIC)
        return np.asarray(im).transpose(2, 0, 1)

    def load(indices: np.ndarray) -> Loaded:
        idx = np.asarray(indices, np.int64)
        imgs = np.stack([variant(int(i) // len(base), base[int(i) % len(base)]) for i in idx])
        return Loaded(idx, imgs)

    return Source("bench", {"kind": "bench", "copies": copies}, 3, 256, [4, 8, 16, 32, 64, 128, 256], keys, {}, load)


@contextmanager
def scratch_s3(prefix: str) -> Iterator[tuple[Path, str]]:
    """(a scratch folder, the endpoint of moto's S3 server on a free loopback port), this process's
    AWS environment pointed at it; the server stopped and the folder removed afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("moto_server")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
    work = Path(tempfile.mkdtemp(prefix=prefix))
    proc = subprocess.Popen(cmd + ["-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto's S3 server ({' '.join(cmd)}) did not listen on 127.0.0.1:{port} "
                                       f"within 30 s (exit code {proc.poll()})") from None
                time.sleep(0.1)
        endpoint = f"http://127.0.0.1:{port}"
        os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_EC2_METADATA_DISABLED": "true"})
        yield work, endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


def upload(local_dir: Path, endpoint: str) -> str:
    """A prepared dataset copied into a new bucket on the moto server; returns its ``s3://`` URI."""
    import pyarrow.fs as pafs

    from alae_ray.data.storage import s3_filesystem

    pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                      endpoint_override=endpoint.split("://")[1], scheme="http",
                      allow_bucket_creation=True).create_dir("bench")
    pafs.copy_files(str(local_dir), "bench/ds", source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=s3_filesystem("s3://bench"))
    return "s3://bench/ds"


def consume(batches) -> tuple[int, float, float]:
    """(images, seconds, first-batch seconds) for a consumer making flipped float tensors."""
    t0 = time.perf_counter()
    n, first = 0, None
    for b in batches:
        x = to_tensor_batch(b, flip=True)
        n += x.shape[0]
        if first is None:
            first = time.perf_counter() - t0
    return n, time.perf_counter() - t0, first or 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--levels", type=int, nargs="+", default=[8, 32, 128, 256])
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    with scratch_s3("bench-data-") as (work, endpoint):
        src = replicated_source(args.copies)
        t = time.perf_counter()
        local = prepare(src, str(work / "ds"), PrepareOptions(progress=False, test_count=0))
        t_prep = time.perf_counter() - t
        t = time.perf_counter()
        remote = open_dataset(upload(work / "ds", endpoint))
        t_up = time.perf_counter() - t
        size = sum(s.bytes for s in local.shards)
        print(f"dataset: {len(src.keys)} images ({args.copies} x bedroom256), levels 4..256, "
              f"{size / 1e6:.0f} MB of shards; prepare {t_prep:.1f} s ({len(src.keys) / t_prep:.0f} img/s), "
              f"upload to S3 {t_up:.1f} s", flush=True)

        import ray

        from alae_ray.data.ray_reader import level_dataset

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        consume(level_dataset(remote, 8, shuffle="none").iter_batches(batch_size=args.batch, batch_format="numpy"))  # warm-up
        header = (f"{'level':>5} {'rows':>6} {'MB':>7} | {'local pyarrow':>13} | {'S3 pyarrow':>10} | "
                  f"{'S3 Ray files':>12} {'1st batch':>9} | {'S3 Ray rows':>11} {'1st batch':>9} | {'Ray files/local':>15}")
        print(header)
        print("-" * len(header))
        for r in args.levels:
            rows = local.count(r, "train")
            mb = sum(s.bytes for s in local.shards_for(r, "train")) / 1e6
            n1, t1, _ = consume(iter_level_batches(local, r, "train", args.batch, seed=0))
            n2, t2, _ = consume(iter_level_batches(remote, r, "train", args.batch, seed=0))
            ds = level_dataset(remote, r, shuffle="files")
            n3, t3, f3 = consume(ds.iter_batches(batch_size=args.batch, batch_format="numpy",
                                                 local_shuffle_buffer_size=4 * args.batch))
            n4, t4, f4 = consume(level_dataset(remote, r, shuffle="rows").iter_batches(batch_size=args.batch, batch_format="numpy"))
            assert n1 == n2 == n3 == n4 == rows, (n1, n2, n3, n4, rows)
            print(f"{r:>5} {rows:>6} {mb:>7.1f} | {n1 / t1:>9.0f} i/s | {n2 / t2:>6.0f} i/s | {n3 / t3:>8.0f} i/s "
                  f"{f3:>8.2f}s | {n4 / t4:>7.0f} i/s {f4:>8.2f}s | {(n3 / t3) / (n1 / t1):>15.3f}", flush=True)
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Images per second from prepared shards to training-ready tensors on the device (no Ray).

The worker's path after Ray Data hands it a batch: ``core.pixels.ingest`` (uint8 into pinned host
memory, a non-blocking copy, flips and scaling on the device). Here a background thread reading the
shards with pyarrow and keeping ``--prefetch`` batches ready stands in for Ray Data's
``prefetch_batches=2``, which the device machine (PyTorch, no Ray) cannot run. Measured side by
side in one process:

- ``pinned+prefetch``: the worker's path, a consumer that only takes batches;
- ``pageable, inline``: the same batches read in the consumer's thread and copied from pageable
  memory as float32 (the path before this issue);
- each of both while a GPU-bound loop (``--busy-ms`` of matrix products per batch) runs, the
  overlap a training step gets.

    python benchmarks/bench_ingest.py --resolution 256 --count 2048 --batch 32
"""

from __future__ import annotations

import argparse
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alae_ray.core.config import ModelConfig  # noqa: E402
from alae_ray.core.pixels import ingest  # noqa: E402
from alae_ray.data import PrepareOptions, iter_level_batches, prepare  # noqa: E402
from alae_ray.data.sources import shapes_source  # noqa: E402


def prefetched(batches, depth: int):
    """Yield from ``batches`` produced by a background thread, ``depth`` batches ahead."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def produce():
        for b in batches:
            q.put(b)
        q.put(done)

    threading.Thread(target=produce, daemon=True).start()
    while (b := q.get(timeout=600)) is not done:
        yield b


def run(ds, res: int, batch: int, device: torch.device, mode: str, busy_ms: float, epochs: int) -> float:
    model = ModelConfig(max_resolution=res)
    work = torch.randn(4096, 4096, device=device) if busy_ms else None
    per_matmul = None
    if busy_ms:  # calibrate: how many 4096^3 products take busy_ms
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(20):
            work @ work
        torch.cuda.synchronize()
        per_matmul = (time.perf_counter() - t) / 20 * 1000
    n, t0 = 0, time.perf_counter()
    for epoch in range(epochs):
        batches = iter_level_batches(ds, res, batch_size=batch, seed=epoch, drop_last=True)
        for b in (prefetched(batches, 2) if mode == "pinned+prefetch" else batches):
            if mode == "pinned+prefetch":
                x = ingest(b["image"], b["id"], epoch, model, device, flip=True)
            else:
                x = torch.from_numpy(np.ascontiguousarray(b["image"])).float().div_(127.5).sub_(1.0)
                x = torch.where(torch.rand(len(x), 1, 1, 1) < 0.5, x.flip(-1), x).to(device)
            n += len(x)
            for _ in range(max(1, round(busy_ms / per_matmul)) if busy_ms else 0):  # the training step's GPU work
                work @ work
    torch.cuda.synchronize() if device.type == "cuda" else None
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--count", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--busy-ms", type=float, default=0.0, help="also measure with this much GPU work per batch")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        t = time.perf_counter()
        ds = prepare(shapes_source(args.count, args.resolution), str(Path(tmp) / "ds"),
                     PrepareOptions(progress=False, test_count=0))
        print(f"# bench_ingest {args.count} shapes images at {args.resolution}px prepared in "
              f"{time.perf_counter() - t:.0f} s; device={device} "
              f"({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}) torch={torch.__version__}")
        busy = [0.0] + ([args.busy_ms] if args.busy_ms and device.type == "cuda" else [])
        for b in busy:
            rates = {}
            for mode in ("pageable, inline", "pinned+prefetch"):
                run(ds, args.resolution, args.batch, device, mode, b, 1)  # warm: page cache, allocator
                rates[mode] = run(ds, args.resolution, args.batch, device, mode, b, args.epochs)
                print(f"{mode:>18}  busy {b:5.1f} ms/batch  {rates[mode]:9.0f} images/s", flush=True)
            print(f"{'ratio':>18}  busy {b:5.1f} ms/batch  pinned+prefetch / pageable = "
                  f"{rates['pinned+prefetch'] / rates['pageable, inline']:.2f}x", flush=True)


if __name__ == "__main__":
    main()

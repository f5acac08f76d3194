"""Serving throughput with and without request batching, over real HTTP on loopback.

Starts a local Ray + Serve, deploys the same checkpoint twice (``max_batch_size=1`` and
``--batch-size``), and drives each in turn with ``--clients`` concurrent asyncio clients sending
``--requests`` reconstruction requests in all. Prints throughput, p50/p99 latency, errors, the
batch sizes the model saw, and the batched/unbatched throughput ratio.

    python benchmarks/bench_serve.py                      # trains a tiny checkpoint first (~10 s)
    python benchmarks/bench_serve.py --checkpoint runs/ffhq/checkpoint --device cuda --num-gpus 1
    python benchmarks/bench_serve.py --engine-only --device cuda   # the model alone, no Ray (e.g. a GPU box)
    python benchmarks/bench_serve.py --preset celeba128            # a preset's real networks, untrained
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
FACES = REPO.parent / "shared" / "data" / "faces128"


def make_checkpoint(directory: Path, preset: str = "tiny", kimg: float = 0.3) -> str:
    """``preset`` trained ``kimg`` on 64 random images (0: its networks at initialisation, the real
    architecture's cost without training)."""
    import torch

    from alae_ray.core.checkpoint import write_checkpoint
    from alae_ray.core.config import load_config
    from alae_ray.core.phases import ALAEPhases
    from alae_ray.core.session import TensorImages, train

    cfg = load_config(preset, [])
    phases = ALAEPhases(cfg)
    if kimg:
        r = cfg.model.max_resolution
        x = torch.rand(64, cfg.model.channels, r, r, generator=torch.Generator().manual_seed(0)) * 2 - 1
        train(phases, TensorImages(x), max_kimg=kimg)
    return str(write_checkpoint(directory / preset, cfg, phases.tensors(), phases.progress()))


def percentile(seconds: list[float], q: float) -> float:
    """The ``q`` quantile of latencies in seconds, in milliseconds (NaN for none)."""
    v = sorted(seconds)
    return v[min(len(v) - 1, int(q * len(v)))] * 1000 if v else float("nan")


def start_serve(temp_prefix: str, **http_options) -> str:
    """A local Ray (4 logical CPUs, its own temp folder) and Serve's proxy on a free loopback port;
    returns the proxy's base URL."""
    import ray
    from ray import serve

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix=temp_prefix, dir="/tmp"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port, **http_options})
    return f"http://127.0.0.1:{port}"


def mean_batch(before: dict, after: dict) -> float:
    """Mean requests per model batch between two /api/stats histograms."""
    diff = {int(k): n - before.get(k, 0) for k, n in after.items()}
    batches = sum(diff.values())
    return sum(k * n for k, n in diff.items()) / batches if batches else float("nan")


def payloads() -> list[bytes]:
    """Real faces when ../shared/data is beside the repository, else synthetic PNGs."""
    files = sorted(FACES.glob("*.png"))[:8]
    if files:
        return [p.read_bytes() for p in files]
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(8):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


async def drive(url: str, images: list[bytes], clients: int, total: int, deadline_s: float, raw: bool = False) -> dict:
    """``clients`` workers share ``total`` requests; each request's latency and status are recorded."""
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:
        stop_at = time.perf_counter() + deadline_s

        async def worker():
            for i in counter:
                if time.perf_counter() > stop_at:
                    errors.append("deadline")
                    continue
                t = time.perf_counter()
                try:
                    image = images[i % len(images)]
                    r = await (client.post(url, content=image, headers={"Content-Type": "image/png"}) if raw else
                               client.post(url, files={"image": ("face.png", image, "image/png")}))
                    if r.status_code != 200:
                        errors.append(f"HTTP {r.status_code}")
                        continue
                    latencies.append(time.perf_counter() - t)
                except httpx.HTTPError as exc:
                    errors.append(type(exc).__name__)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    lat = latencies
    return {"requests": total, "ok": len(lat), "errors": len(errors), "error_kinds": sorted(set(errors)),
            "wall_s": wall, "throughput_rps": len(lat) / wall, "p50_ms": percentile(lat, 0.50),
            "p99_ms": percentile(lat, 0.99), "mean_ms": statistics.fmean(lat) * 1000 if lat else float("nan")}


def engine_only(checkpoint: str, device: str, batch_size: int, threads: int, seconds: float = 3.0) -> dict:
    """Images per second of the model's reconstruct at batch 1 and ``batch_size``: batching's ceiling."""
    import torch

    from alae_ray.serve.engine import open_engine

    torch.set_num_threads(threads)  # as in a Serve replica, where Ray sets OMP_NUM_THREADS to its num_cpus
    engine = open_engine(checkpoint, device=device)
    r = engine.model.resolution
    x = np.random.default_rng(0).integers(0, 256, (batch_size, r, r, 3), dtype=np.uint8)
    out = {}
    for bs in (1, batch_size):
        engine.reconstruct(x[:bs])
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            engine.reconstruct(x[:bs])
            n += 1
        if engine.model.device.type == "cuda":
            torch.cuda.synchronize()
        out[bs] = n * bs / (time.perf_counter() - start)
    return {"device": engine.model.device.type, "resolution": r, "images_per_s": out,
            "ratio": out[batch_size] / out[1]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="checkpoint (local or s3://); default: train a tiny one")
    p.add_argument("--preset", help="instead of --checkpoint: this preset's networks, untrained")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=640, help="requests per configuration")
    p.add_argument("--batch-size", type=int, default=32, help="max_batch_size of the batched deployment")
    p.add_argument("--batch-wait-ms", type=float, default=10.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--num-gpus", type=float, default=0)
    p.add_argument("--num-cpus", type=float, default=1, help="CPUs per model replica")
    p.add_argument("--deadline-s", type=float, default=300.0, help="per configuration")
    p.add_argument("--raw", action="store_true", help="send each image as the request body, not multipart")
    p.add_argument("--json", action="store_true")
    p.add_argument("--engine-only", action="store_true", help="time the model alone (no Ray, no HTTP)")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    t0 = time.perf_counter()
    checkpoint = args.checkpoint or (make_checkpoint(tmp, args.preset, 0) if args.preset else make_checkpoint(tmp))
    if args.engine_only:
        r = engine_only(checkpoint, args.device, args.batch_size, max(1, int(args.num_cpus)))
        print(json.dumps(r, indent=2) if args.json else
              f"model only ({r['device']}, {r['resolution']}px): " + ", ".join(
                  f"batch {k}: {v:.0f} img/s" for k, v in r["images_per_s"].items()) + f"; ratio {r['ratio']:.2f}x")
        return 0

    import ray
    from ray import serve

    from alae_ray.serve.app import ServeArgs, build_app

    base = start_serve("ray-bs-")
    images = payloads()
    configs = [("unbatched", 1), ("batched", args.batch_size)]
    results = {}
    try:
        for name, bs in configs:
            serve.run(build_app(ServeArgs(checkpoint=checkpoint, device=args.device, num_gpus=args.num_gpus,
                                          num_cpus=args.num_cpus, max_batch_images=bs, ui=False,
                                          batch_wait_timeout_s=args.batch_wait_ms / 1000.0)),
                      name=name, route_prefix=f"/{name}")
            url = f"{base}/{name}/api/reconstruct"
            asyncio.run(drive(url, images, min(8, args.clients), 64, args.deadline_s, args.raw))  # warm-up
            before = httpx.get(f"{base}/{name}/api/stats", timeout=30).json()["reconstruct"]["histogram"]
            r = asyncio.run(drive(url, images, args.clients, args.requests, args.deadline_s, args.raw))
            stats = httpx.get(f"{base}/{name}/api/stats", timeout=30).json()["reconstruct"]
            r.update(max_batch_size=bs, batch_histogram=stats["histogram"],
                     mean_batch=mean_batch(before, stats["histogram"]))
            results[name] = r
            serve.delete(name)  # one at a time: both would share the same two cores
    finally:
        serve.shutdown()
        ray.shutdown()
    ratio = results["batched"]["throughput_rps"] / max(results["unbatched"]["throughput_rps"], 1e-9)
    summary = {"clients": args.clients, "requests": args.requests, "configs": results, "ratio": ratio,
               "goal_3x_zero_errors": ratio >= 3 and all(r["errors"] == 0 for r in results.values()),
               "total_s": time.perf_counter() - t0}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"reconstruct, {args.clients} concurrent clients, {args.requests} requests per configuration, "
          f"{'raw bodies' if args.raw else 'multipart'}")
    print(f"{'config':<10} {'max_batch':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'mean batch':>10}  "
          f"batch sizes seen (with warm-up)")
    for name, r in results.items():
        hist = ", ".join(f"{k}x{v}" for k, v in sorted(r["batch_histogram"].items(), key=lambda kv: int(kv[0])))
        print(f"{name:<10} {r['max_batch_size']:>9} {r['throughput_rps']:>8.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
              f"{r['errors']:>6} {r['mean_batch']:>10.2f}  {hist[:120]}")
    print(f"throughput ratio batched/unbatched: {ratio:.2f}x (goal >= 3x with zero errors: "
          f"{'met' if summary['goal_3x_zero_errors'] else 'NOT met'}); total {summary['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

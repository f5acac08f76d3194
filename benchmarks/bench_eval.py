"""Evaluation throughput: Inception pool3 features (images/s), LPIPS pairs/s, and the Fréchet
distance at 2048-D (both routes), on random weights of the real architectures (so no download is
needed; throughput does not depend on the weight values).

    python benchmarks/bench_eval.py --device cpu --images 64 --batch 16
    python benchmarks/bench_eval.py --device cuda --images 2048 --batch 256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def timed(fn, sync) -> float:
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--resolution", type=int, default=256, help="input size (Inception resizes to 299)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--skip-frechet", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # Always a fresh temporary TORCH_HOME: random weights must never land in a real hub cache.
    os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="bench-eval-")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' stand-in weights
    from helpers import write_random_weights

    from alae_ray.metrics.frechet import (
        feature_statistics,
        frechet_distance,
        frechet_distance_to_features,
    )
    from alae_ray.metrics.networks import inception_features, load_inception, load_lpips

    write_random_weights(os.environ["TORCH_HOME"])
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    inception, lpips = load_inception(dev), load_lpips(dev)
    x = torch.rand(args.batch, 3, args.resolution, args.resolution, device=dev) * 2 - 1
    inception_features(inception, x[:2])  # warm-up
    lpips(x[:2], x[:2])
    steps = max(1, args.images // args.batch)
    t_inc = timed(lambda: [inception_features(inception, x) for _ in range(steps)], sync)
    with torch.no_grad():
        t_lp = timed(lambda: [lpips(x, x.flip(0)) for _ in range(steps)], sync)
    out = {"device": str(dev), "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "batch": args.batch, "resolution": args.resolution,
           "inception_images_per_s": round(steps * args.batch / t_inc, 2),
           "lpips_pairs_per_s": round(steps * args.batch / t_lp, 2)}
    if not args.skip_frechet:
        rng = np.random.default_rng(0)
        big, small = rng.normal(size=(4096, 2048)), rng.normal(size=(256, 2048))
        mu, sigma = feature_statistics(big)
        out["frechet_2048d_full_s"] = round(timed(lambda: frechet_distance(mu, sigma, mu, sigma), lambda: None), 2)
        out["frechet_2048d_256_samples_s"] = round(timed(lambda: frechet_distance_to_features(small, mu, sigma),
                                                         lambda: None), 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""Ray Train against the core's single-process loop, and 1 against 2 workers, per level.

For each level, in one process and one run (so machine noise hits all variants alike):
  * core:   the single-process session (``alae_ray.core.session.train``) on the same images, in memory;
  * ray x1: ``alae-ray train`` with one worker (streaming the level from the prepared dataset);
  * ray x2: two workers, same global batch.
Each variant trains at a fixed level (the schedule starts there and stays), and images/s is the
mean of the steady-state ticks (the first tick, with start-up and warm-up, is dropped).

    python benchmarks/bench_train.py --levels 0 2 3 --kimg 1.0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def steady(rows: list[dict]) -> float:
    return statistics.mean(r["images_per_sec"] for r in rows[1:]) if len(rows) > 1 else float("nan")


def core_run(overrides, data, res, kimg, tick, threads) -> float:
    from alae_ray.core.config import load_config
    from alae_ray.core.phases import ALAEPhases
    from alae_ray.core.session import TensorImages, train
    from alae_ray.data import read_level_numpy

    torch.set_num_threads(threads)
    cfg = load_config("tiny", overrides)
    images = torch.from_numpy(read_level_numpy(data, res, "train")["image"].copy()).float().div(127.5).sub(1)
    rows = []
    train(ALAEPhases(cfg), TensorImages(images), max_kimg=kimg, tick_kimg=tick,
          callbacks=[lambda t, _: rows.append({"images_per_sec": t.images_per_sec})])
    return steady(rows)


def ray_run(overrides, data, kimg, tick, workers, cpus, tmp) -> float:
    from alae_ray.train.run import TrainOptions, describe, run

    name = f"w{workers}-{time.time_ns()}"
    run(describe(TrainOptions(preset="tiny", overrides=overrides, data=data, storage=str(tmp), name=name,
                              workers=workers, cpus_per_worker=cpus, max_kimg=kimg, tick_kimg=tick,
                              checkpoint_kimg=kimg, console=False, validate="off")))
    # the ticks' rows (a validation's row, were one on, has no iteration)
    rows = [json.loads(l) for l in (Path(tmp) / name / "artifacts" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "iteration" in r]
    return steady(rows)


def main() -> None:
    from alae_ray.infra.datasets import EMBEDDED_COUNT, embedded_dataset

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", type=int, nargs="+", default=[0, 2, 3])
    ap.add_argument("--kimg", type=float, default=1.0, help="images (thousands) per variant and level")
    ap.add_argument("--ticks", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16, help="global batch (all levels)")
    ap.add_argument("--images", type=int, default=EMBEDDED_COUNT,
                    help="size of the procedural dataset (90%% train); small ones make Ray Data restart an epoch often")
    args = ap.parse_args()

    import ray

    ncpu = os.cpu_count() or 2
    data = embedded_dataset(32, args.images)
    ray.init(num_cpus=max(4, ncpu), include_dashboard=False, log_to_driver=False)
    print(f"# bench_train preset=tiny batch={args.batch} kimg/variant={args.kimg} images={args.images} cpus={ncpu} torch={torch.__version__}")
    print(f"{'level':>5} {'res':>4} | {'core img/s':>10} {'ray x1':>8} {'ray x2':>8} | {'ray x1/core':>11} {'x2/x1':>6}")
    tick = args.kimg / args.ticks
    with tempfile.TemporaryDirectory() as tmp:
        for level in args.levels:
            res = 4 * 2**level
            overrides = [f"schedule.start_resolution={res}", "schedule.stable_kimg=100000",
                         f"schedule.batch={{4: {args.batch}}}", "schedule.lr={4: 0.002}"]
            core = core_run(overrides, data, res, args.kimg, tick, threads=ncpu)
            one = ray_run(overrides, data, args.kimg, tick, 1, ncpu, tmp)
            two = ray_run(overrides, data, args.kimg, tick, 2, ncpu / 2, tmp)
            print(f"{level:>5} {res:>4} | {core:>10.1f} {one:>8.1f} {two:>8.1f} | {one / core:>11.2f} {two / one:>6.2f}",
                  flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()

"""Ray Train against the core's single-process loop, and 1 against 2 workers, per level.

For each level, in one process and one run (so machine noise hits all variants alike):
  * core:   the single-process session (``alae_ray.core.session.train``) on the same images, in memory;
  * ray x1: ``alae-ray train`` with one worker (streaming the level from the prepared dataset);
  * ray x2: two workers, same global batch.
Each variant trains at a fixed level (the schedule starts there and stays), and images/s is the
mean of the steady-state ticks (the first tick, with start-up and warm-up, is dropped).

Where Ray's time goes, for ray x1: ``wait`` is the share of its steady ticks the worker waited for
batches (the session's ``data_wait_s``; the rest is the ALAE step itself), and ``cpu`` splits the CPU
seconds every process on the machine used during the run (sampled with psutil every 0.2 s) into the
training worker, Ray Data's tasks, Ray's own processes (raylet, GCS, dashboard, Train's controller,
...) and everything else, against the machine's CPU seconds in that time.

    python benchmarks/bench_train.py --levels 0 2 3 --kimg 1.0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch


def steady(rows: list[dict], key: str = "images_per_sec") -> float:
    return statistics.mean(r[key] for r in rows[1:]) if len(rows) > 1 else float("nan")


def kind(name: str, cmdline: str) -> str:
    """Which part of a Ray run a process is, by its title (Ray's workers retitle themselves)."""
    if "RayTrainWorker" in cmdline or "train_fn" in cmdline:
        return "train worker"
    if any(k in cmdline for k in ("ReadParquet", "MapBatches", "FromItems", "ray::_read", "ray::Map", "SplitCoordinator")):
        return "Ray Data"
    if "ray" in cmdline or name in ("raylet", "gcs_server"):
        return "Ray itself"
    return "other"


class CpuSampler:
    """CPU seconds used by every process while it runs, by ``kind`` (a process's last sample counts:
    one that ends between two samples loses at most 0.2 s)."""

    def __init__(self):
        self.last: dict[int, tuple[str, float]] = {}
        self.me = os.getpid()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.wait(0.2):
            for p in psutil.process_iter(["name", "cmdline", "cpu_times"]):
                t = p.info["cpu_times"]
                if t is None:
                    continue
                what = "driver" if p.pid == self.me else kind(p.info["name"] or "", " ".join(p.info["cmdline"] or []))
                self.last[p.pid] = (what, t.user + t.system)

    def __enter__(self):
        self.base = {p.pid: sum(p.cpu_times()[:2]) for p in psutil.process_iter() if p.is_running()}
        self.started = time.perf_counter()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.wall = time.perf_counter() - self.started
        out: dict[str, float] = {}
        for pid, (what, used) in self.last.items():
            out[what] = out.get(what, 0.0) + used - self.base.get(pid, 0.0)
        self.by_kind = out


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


def ray_run(overrides, data, kimg, tick, workers, cpus, tmp) -> tuple[float, float, CpuSampler]:
    """(steady images/s, the steady ticks' share waiting for data, the run's CPU by process kind)."""
    from alae_ray.train.run import TrainOptions, describe, run

    name = f"w{workers}-{time.time_ns()}"
    with CpuSampler() as cpu:
        run(describe(TrainOptions(preset="tiny", overrides=overrides, data=data, storage=str(tmp), name=name,
                                  workers=workers, cpus_per_worker=cpus, max_kimg=kimg, tick_kimg=tick,
                                  checkpoint_kimg=kimg, console=False, validate="off")))
    # the ticks' rows (a validation's row, were one on, has no iteration)
    rows = [json.loads(l) for l in (Path(tmp) / name / "artifacts" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "iteration" in r]
    # a tick's seconds: its kimg (since the row before) times its s/kimg
    ticks_s = [(r["kimg"] - q["kimg"]) * r["sec_per_kimg"] for q, r in zip(rows, rows[1:])]
    wait = sum(r["data_wait_s"] for r in rows[1:]) / sum(ticks_s) if ticks_s else float("nan")
    return steady(rows), wait, cpu


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
    print(f"{'level':>5} {'res':>4} | {'core img/s':>10} {'ray x1':>8} {'ray x2':>8} | {'ray x1/core':>11} {'x2/x1':>6} | "
          f"x1 wait | x1 run: CPU-s by process (of the machine's)")
    tick = args.kimg / args.ticks
    with tempfile.TemporaryDirectory() as tmp:
        for level in args.levels:
            res = 4 * 2**level
            overrides = [f"schedule.start_resolution={res}", "schedule.stable_kimg=100000",
                         f"schedule.batch={{4: {args.batch}}}", "schedule.lr={4: 0.002}"]
            core = core_run(overrides, data, res, args.kimg, tick, threads=ncpu)
            one, wait, cpu = ray_run(overrides, data, args.kimg, tick, 1, ncpu, tmp)
            two, _, _ = ray_run(overrides, data, args.kimg, tick, 2, ncpu / 2, tmp)
            used = ", ".join(f"{k} {v:.1f}" for k, v in sorted(cpu.by_kind.items(), key=lambda kv: -kv[1]))
            print(f"{level:>5} {res:>4} | {core:>10.1f} {one:>8.1f} {two:>8.1f} | {one / core:>11.2f} {two / one:>6.2f} | "
                  f"{wait:>7.1%} | {used} (of {cpu.wall * ncpu:.1f})", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()

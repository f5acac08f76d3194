"""Ray Train against the core's single-process loop, and 1 against 2 workers, per level.

For each level, in one process and one run (so machine noise hits all variants alike):
  * core:   the single-process session (``alae_ray.core.session.train``) on the same images, in memory;
  * ray x1: ``alae-ray train`` with one worker (streaming the level from the prepared dataset);
  * ray x2: two workers, same global batch.
Each variant trains at a fixed level (the schedule starts there and stays), and images/s is the
mean of the steady-state ticks (the first tick, with start-up and warm-up, is dropped).

Where Ray's time goes, for ray x1: ``wait`` is the share of its steady ticks the worker waited for
batches (the session's ``data_wait_s``; the rest is the ALAE step itself), and the CPU split is the
machine's CPU time during those steady ticks (sampled with psutil every 0.2 s, lined up by the
metrics rows' ``time``) by process: the training worker, Ray Data's tasks, Ray's own processes
(raylet, GCS, dashboard, Train's controller, ...), the driver and everything else; then the
busiest processes by title.

    python benchmarks/bench_train.py --levels 0 2 --kimg 2.4 --ticks 4 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch


def steady(rows: list[dict], key: str = "images_per_sec") -> float:
    return statistics.mean(r[key] for r in rows[1:]) if len(rows) > 1 else float("nan")


def kind(name: str, cmdline: str) -> tuple[str, str]:
    """(which part of a Ray run a process is, its title), by its title: Ray's workers retitle
    themselves to the task they run (an idle pooled worker is ``ray::IDLE``)."""
    args = cmdline.split(" ")
    title = args[0] if cmdline else name
    if title.endswith(("python", "python3")) and len(args) > 1:  # a Python script: name it by its file
        title = Path(next((a for a in args[1:] if not a.startswith("-")), title)).name
    if "RayTrainWorker" in cmdline or "train_fn" in cmdline:
        return "train worker", "RayTrainWorker"
    if any(k in cmdline for k in ("ReadParquet", "MapBatches", "FromItems", "ray::_read", "ray::Map",
                                  "SplitCoordinator", "ray::Read")):
        return "Ray Data", title
    if "ray" in cmdline or name in ("raylet", "gcs_server"):
        return "Ray itself", (name if name in ("raylet", "gcs_server") else title).removeprefix("ray::")[:40]
    return "other", name


class CpuSampler:
    """CPU seconds every process uses, sampled every 0.2 s, each sample's increase counted to what the
    process was at that sample; ``window(t0, t1)`` sums the samples taken between two Unix times."""

    def __init__(self):
        self.samples: list[tuple[float, str, str, float]] = []  # (time, kind, title, CPU-s since last)
        self.me = os.getpid()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        last: dict[int, float] = {}
        while not self.stop.wait(0.2):
            now = time.time()
            for p in psutil.process_iter(["name", "cmdline", "cpu_times"]):
                t = p.info["cpu_times"]
                if t is None:
                    continue
                used = t.user + t.system
                what, title = ("driver", "driver") if p.pid == self.me else kind(
                    p.info["name"] or "", " ".join(p.info["cmdline"] or []))
                # a process born since the last sample: all it used so far
                self.samples.append((now, what, title, used - last.get(p.pid, self.base.get(p.pid, 0.0))))
                last[p.pid] = used

    def __enter__(self):
        self.base = {p.pid: sum(p.cpu_times()[:2]) for p in psutil.process_iter() if p.is_running()}
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def window(self, t0: float, t1: float, by: int = 1) -> dict[str, float]:
        """CPU-s by kind (``by=1``) or by title (``by=2``) in the samples taken in (t0, t1]."""
        out: dict[str, float] = {}
        for s in self.samples:
            if t0 < s[0] <= t1:
                out[s[by]] = out.get(s[by], 0.0) + s[3]
        return out


@dataclass
class Measured:
    """One variant's steady ticks: images/s, the share of them spent waiting for data, and the
    machine's CPU in them by process kind and by title (shares of the machine)."""
    images_per_sec: float
    wait: float
    kinds: dict[str, float]
    titles: dict[str, float]


def measure(rows: list[dict], cpu: CpuSampler, ncpu: int) -> Measured:
    # a tick's seconds: its kimg (since the row before) times its s/kimg
    ticks_s = [(r["kimg"] - q["kimg"]) * r["sec_per_kimg"] for q, r in zip(rows, rows[1:])]
    wait = sum(r.get("data_wait_s", 0.0) for r in rows[1:]) / sum(ticks_s) if ticks_s else float("nan")
    t0, t1 = rows[0]["time"], rows[-1]["time"]
    share = lambda used: {k: v / ((t1 - t0) * ncpu) for k, v in top(used)}  # noqa: E731
    return Measured(steady(rows), wait, share(cpu.window(t0, t1)), share(cpu.window(t0, t1, by=2)))


def core_run(overrides, data, res, kimg, tick, ncpu) -> Measured:
    from alae_ray.core.config import load_config
    from alae_ray.core.phases import ALAEPhases
    from alae_ray.core.session import TensorImages, train
    from alae_ray.data import read_level_numpy

    torch.set_num_threads(ncpu)
    cfg = load_config("tiny", overrides)
    images = torch.from_numpy(read_level_numpy(data, res, "train")["image"].copy()).float().div(127.5).sub(1)
    rows = []
    with CpuSampler() as cpu:  # sampled as the Ray runs are: the sampler's own CPU hits both alike
        train(ALAEPhases(cfg), TensorImages(images), max_kimg=kimg, tick_kimg=tick,
              callbacks=[lambda t, _: rows.append(t.metrics)])
    return measure(rows, cpu, ncpu)


def ray_run(overrides, data, kimg, tick, workers, ncpu, tmp) -> Measured:
    from alae_ray.train.run import TrainOptions, describe, run

    name = f"w{workers}-{time.time_ns()}"
    with CpuSampler() as cpu:
        run(describe(TrainOptions(preset="tiny", overrides=overrides, data=data, storage=str(tmp), name=name,
                                  workers=workers, cpus_per_worker=ncpu / workers, max_kimg=kimg, tick_kimg=tick,
                                  checkpoint_kimg=kimg, console=False, validate="off")))
    # the ticks' rows (a validation's row, were one on, has no iteration)
    rows = [json.loads(l) for l in (Path(tmp) / name / "artifacts" / "metrics.jsonl").read_text().splitlines()]
    return measure([r for r in rows if "iteration" in r], cpu, ncpu)


def top(used: dict[str, float]) -> list[tuple[str, float]]:
    return sorted(used.items(), key=lambda kv: -kv[1])


def shares(d: dict[str, float], most: int = 8) -> str:
    return ", ".join(f"{k} {v:.1%}" for k, v in list(d.items())[:most])


def main() -> None:
    from alae_ray.infra.datasets import EMBEDDED_COUNT, embedded_dataset

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", type=int, nargs="+", default=[0, 2, 3])
    ap.add_argument("--kimg", type=float, default=1.0, help="images (thousands) per variant and level")
    ap.add_argument("--ticks", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds of (core, ray x1, ray x2) per level, one after the other; the ratios are the "
                         "rounds' medians (one round's figures move by 10-30%% on this machine)")
    ap.add_argument("--batch", type=int, default=16, help="global batch (all levels)")
    ap.add_argument("--images", type=int, default=EMBEDDED_COUNT,
                    help="size of the procedural dataset (90%% train); small ones make Ray Data restart an epoch often")
    args = ap.parse_args()

    import ray

    ncpu = os.cpu_count() or 2
    data = embedded_dataset(32, args.images)
    ray.init(num_cpus=max(4, ncpu), include_dashboard=False, log_to_driver=False)
    print(f"# bench_train preset=tiny batch={args.batch} kimg/variant={args.kimg} images={args.images} cpus={ncpu} "
          f"repeat={args.repeat} torch={torch.__version__}")
    print(f"{'level':>5} {'res':>4} {'round':>5} | {'core img/s':>10} {'ray x1':>8} {'ray x2':>8} | "
          f"{'ray x1/core':>11} {'x2/x1':>6} | x1 wait | steady ticks: the machine's CPU by process kind")
    tick = args.kimg / args.ticks
    with tempfile.TemporaryDirectory() as tmp:
        for level in args.levels:
            res = 4 * 2**level
            overrides = [f"schedule.start_resolution={res}", "schedule.stable_kimg=100000",
                         f"schedule.batch={{4: {args.batch}}}", "schedule.lr={4: 0.002}"]
            rounds = []
            for r in range(args.repeat):
                core = core_run(overrides, data, res, args.kimg, tick, ncpu)
                one = ray_run(overrides, data, args.kimg, tick, 1, ncpu, tmp)
                two = ray_run(overrides, data, args.kimg, tick, 2, ncpu, tmp)
                rounds.append((core, one, two))
                c, o, t = core.images_per_sec, one.images_per_sec, two.images_per_sec
                print(f"{level:>5} {res:>4} {r + 1:>5} | {c:>10.1f} {o:>8.1f} {t:>8.1f} | {o / c:>11.2f} {t / o:>6.2f} | "
                      f"{one.wait:>7.1%} | core: {shares(core.kinds)}; x1: {shares(one.kinds)}", flush=True)
                print(f"{'':>17}| x1 by process: {shares(one.titles)}", flush=True)
            med = lambda f: statistics.median(f(*x) for x in rounds)  # noqa: E731
            print(f"{level:>5} {res:>4} {'med':>5} | {med(lambda c, o, t: c.images_per_sec):>10.1f} "
                  f"{med(lambda c, o, t: o.images_per_sec):>8.1f} {med(lambda c, o, t: t.images_per_sec):>8.1f} | "
                  f"{med(lambda c, o, t: o.images_per_sec / c.images_per_sec):>11.2f} "
                  f"{med(lambda c, o, t: t.images_per_sec / o.images_per_sec):>6.2f} | "
                  f"{med(lambda c, o, t: o.wait):>7.1%} | (ratios: the rounds' median ratio)", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()

"""What one checkpoint costs the training loop, and the interval automatic pacing gives it.

Builds a preset's full training state (networks, EMA, both Adams' moments, RNG states: what a
worker writes) and times ``write_checkpoint`` to local disk, the part training waits for (Ray Train
uploads it in the background). Prints the size, the seconds, and for the ``--sec-per-kimg`` values
given the kimg between checkpoints that keeps them under 2% of training time, which is what
``CheckpointPacer`` computes at run time from the cost it measures.

    python benchmarks/bench_checkpoint.py --preset ffhq1024 --repeat 3 --sec-per-kimg 1 10 100
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from alae_ray.core.checkpoint import write_checkpoint
from alae_ray.core.config import load_config
from alae_ray.core.pacing import AUTO_BUDGET, AUTO_MIN_KIMG
from alae_ray.core.phases import ALAEPhases
from alae_ray.core.schedule import stage_at


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="ffhq1024")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sec-per-kimg", type=float, nargs="*", default=[],
                    help="training speeds to show the paced interval for (measure yours with bench_core)")
    ap.add_argument("--dir", default=None, help="where to write (default: the system temp dir, as a worker does)")
    args = ap.parse_args()
    cfg = load_config(args.preset)
    phases = ALAEPhases(cfg)
    stage = stage_at(cfg, 0.0)
    phases.set_stage(stage)
    # Adam's moments exist only after a step: give every parameter its state without training
    for opt in (phases.opt_ED, phases.opt_FG):
        for group in opt.param_groups:
            for p in group["params"]:
                opt.state[p] = {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
    tensors = phases.tensors()
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    root = Path(args.dir or tempfile.gettempdir())
    times = []
    for i in range(args.repeat):
        target = root / f"bench-checkpoint-{i}"
        t = time.perf_counter()
        write_checkpoint(target, cfg, tensors, phases.progress())
        times.append(time.perf_counter() - t)
        shutil.rmtree(target, ignore_errors=True)
    cost = sorted(times)[len(times) // 2]
    print(f"# bench_checkpoint preset={cfg.name} ({platform.machine()}, {torch.get_num_threads()} threads) to {root}")
    print(f"state: {size / 2**30:.3f} GiB in {len(tensors)} tensors; write_checkpoint "
          f"{', '.join(f'{t:.2f}' for t in times)} s (median {cost:.2f} s)")
    for spk in args.sec_per_kimg:
        kimg = max(AUTO_MIN_KIMG, cost / (AUTO_BUDGET * spk))
        print(f"at {spk:g} s/kimg: checkpoint every {kimg:,.1f} kimg ({kimg * spk / 60:.1f} min of training) "
              f"keeps checkpoints under {AUTO_BUDGET:.0%}; a fixed {AUTO_MIN_KIMG:g} kimg would cost "
              f"{cost / (AUTO_MIN_KIMG * spk):.1%}")


if __name__ == "__main__":
    main()

"""Core training throughput: ms per full ALAE iteration (all three phases) and images/s per level.

Runs the pure-PyTorch core (no Ray) on synthetic images, so it measures compute only. On CUDA it
measures, in the same process, the variants named by ``--variants`` and prints each one's ratio to
the first: ``fp32`` (plain float32: no TF32, unfused Adam, NCHW), ``bf16`` (what the style presets
use on CUDA: bf16 autocast, channels_last, fused Adam, TF32) and ``bf16+compile`` (that and
``train.compile``). ``first s`` is the warm-up's first iteration, which includes compiling.

    python benchmarks/bench_core.py --preset tiny --levels 0 1 2 3
    python benchmarks/bench_core.py --preset ffhq1024 --device cuda --levels 6 8 --batch 32 \
        --variants fp32,bf16,bf16+compile
    python benchmarks/bench_core.py --preset celebahq256 --levels 2 --batch 32 --compare 834ff12

``--compare REV`` measures another commit's core (checked out into a temporary git worktree) and
this tree's in alternating subprocesses, round after round, and prints the ratio: a before/after
from one run on one machine. ``--versus KEY=VALUE`` does the same for this tree without and with
one more override (e.g. ``train.r1_interval=4``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from alae_ray.core.config import load_config
from alae_ray.core.phases import ALAEPhases
from alae_ray.core.schedule import Stage

FAST = ["train.mixed_precision=true", "train.channels_last=true", "train.fused_adam=true", "train.tf32=true"]
VARIANTS = {
    "fp32": ["train.mixed_precision=false", "train.channels_last=false", "train.fused_adam=false", "train.tf32=false"],
    "bf16": FAST,
    "bf16+compile": FAST + ["train.compile=true"],
}


def measure(cfg, device: str, level: int, batch: int, warmup: int, iters: int) -> dict:
    phases = ALAEPhases(cfg, device)
    res = cfg.model.resolution(level) if cfg.model.kind == "style" else 0
    stage = Stage(level=level, resolution=res, alpha=1.0, batch=batch, lr=0.002, level_start_kimg=0.0,
                  level_end_kimg=float("inf"))
    shape = (batch, cfg.model.channels, res, res) if res else (batch, cfg.model.mlp_input)
    x = (torch.rand(shape, device=device) * 2 - 1)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    start = time.perf_counter()
    for i in range(warmup):
        phases.step(x, stage)
        if i == 0:
            sync()
            first = time.perf_counter() - start
    sync()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(iters):
        phases.step(x, stage)
    sync()
    ms = (time.perf_counter() - start) / iters * 1000
    phases.check_finite()
    out = {"level": level, "resolution": res, "batch": batch, "ms_per_iter": ms, "first_s": first,
           "images_per_s": batch / ms * 1000, "sec_per_kimg": ms / batch}
    if device.startswith("cuda"):
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def compare(args) -> None:
    """Alternate two variants in subprocesses, ``--rounds`` times; print both and the ratio. The
    variants: REV's tree against this one (``--compare``), or this tree without and with one more
    override (``--versus KEY=VALUE``)."""
    repo = Path(__file__).resolve().parents[1]
    tmp = Path(tempfile.mkdtemp(prefix="bench-rev-"))
    level = args.levels[0] if args.levels else 0
    cmd = [sys.executable, str(Path(__file__).resolve()), "--preset", args.preset, "--device", args.device,
           "--levels", str(level), "--warmup", str(args.warmup), "--iters", str(args.iters), "--variants", "fp32",
           "--json", *(["--batch", str(args.batch)] if args.batch else []), *sum((["--set", s] for s in args.set), [])]
    if args.compare:
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(tmp / "tree"), args.compare],
                       check=True, capture_output=True)
        variants = {args.compare: (tmp / "tree", cmd), "this tree": (repo, cmd)}
    else:
        variants = {"base": (repo, cmd), args.versus: (repo, cmd + ["--set", args.versus])}
    times: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for r in range(args.rounds):
            for name, (tree, command) in variants.items():
                env = {**os.environ, "PYTHONPATH": str(tree)}  # that tree's alae_ray first
                out = subprocess.run(command, env=env, cwd=tree, check=True, capture_output=True, text=True).stdout
                row = json.loads(out.strip().splitlines()[-1])[0]
                assert row["source"].startswith(str(tree)), f"measured {row['source']}, not {tree}"
                times[name].append(row["ms_per_iter"])
                print(f"round {r + 1}: {name:>24}  {row['ms_per_iter']:9.1f} ms/iter", flush=True)
    finally:
        if args.compare:
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tmp / "tree")],
                           capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    (old, a), (new, b) = times.items()
    print(f"# {args.preset} level {level}: {old} {min(a):.1f}-{max(a):.1f} ms/iter, {new} {min(b):.1f}-{max(b):.1f}; "
          f"median {old}/{new} = {sorted(a)[len(a) // 2] / sorted(b)[len(b) // 2]:.2f}x (>1: {new} faster)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--levels", type=int, nargs="+", default=None, help="levels to measure (default: all)")
    ap.add_argument("--batch", type=int, default=None, help="batch per iteration (default: the preset's)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--variants", default=None, help=f"comma list of {','.join(VARIANTS)} (default: fp32,bf16 on CUDA, "
                    "fp32 on CPU)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--compare", metavar="REV", help="also measure git revision REV, alternating (see above)")
    ap.add_argument("--versus", metavar="KEY=VALUE", help="also measure this tree with one more override, alternating")
    ap.add_argument("--rounds", type=int, default=3, help="with --compare: alternations")
    args = ap.parse_args()
    if args.compare or args.versus:
        return compare(args)

    base = load_config(args.preset, args.set)
    cuda = args.device.startswith("cuda")
    variants = (args.variants or ("fp32,bf16" if cuda else "fp32")).split(",")
    if unknown := set(variants) - set(VARIANTS):
        ap.error(f"--variants: unknown {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    levels = args.levels if args.levels is not None else list(range(base.model.num_levels))
    machine = torch.cuda.get_device_name() if cuda else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"# bench_core preset={base.name} device={args.device} ({machine}) torch={torch.__version__}")
    print(f"{'variant':>12} {'level':>5} {'res':>5} {'batch':>5} {'ms/iter':>9} {'img/s':>9} {'sec/kimg':>9} "
          f"{'mem GiB':>8} {'first s':>8}")
    rows = []
    for level in levels:
        res = base.model.resolution(level) if base.model.kind == "style" else 0
        batch = args.batch or int(base.schedule.table("batch", max(res, 4)))
        for v in variants:
            cfg = load_config(args.preset, (VARIANTS[v] if cuda else []) + args.set)
            r = {"variant": v, **measure(cfg, args.device, level, batch, args.warmup, args.iters)}
            rows.append(r)
            print(f"{v:>12} {level:>5} {res:>5} {batch:>5} {r['ms_per_iter']:>9.1f} {r['images_per_s']:>9.1f} "
                  f"{r['sec_per_kimg']:>9.2f} {r.get('peak_mem_gib', float('nan')):>8.2f} {r['first_s']:>8.1f}", flush=True)
            if cuda:
                torch.compiler.reset()
                torch.cuda.empty_cache()
        base_row = rows[-len(variants)]
        for r in rows[len(rows) - len(variants) + 1:]:
            print(f"{'ratio':>12} {level:>5} {res:>5} {batch:>5}  {r['variant']}/{base_row['variant']} throughput = "
                  f"{r['images_per_s'] / base_row['images_per_s']:.2f}x", flush=True)
    if args.json:
        import alae_ray

        print(json.dumps([{**r, "source": alae_ray.__file__} for r in rows]))


if __name__ == "__main__":
    main()

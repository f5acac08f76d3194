"""Population-based training against random search with ASHA, on the tiny preset, at equal kimg.

Both sweep the same space (R1 gamma and the learning rates of tuning/tiny_pbt.yaml) with the same
objective (held-out reconstruction + latent reciprocity, every 0.128 kimg) over the same schedule
(4x4 -> 16x16, ``--kimg`` per trial). PBT: a population of 4 perturbed at every level boundary.
ASHA: random samples stopped early (grace 0.5 kimg, halving), ``--asha-samples`` of them so that
its total kimg comes close to PBT's 4 x kimg; both totals are printed. Each sweep runs as the
README runs one (``alae-ray tune``, its own local Ray), one after the other, for each seed.

Prints, per method and seed: the best objective among trials that reached the end, the total kimg
trained; writes a plot of every trial's objective over kimg.

    python benchmarks/bench_pbt.py --seeds 0 1 --out docs/results/pbt_vs_asha.png
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def sweep_file(folder: Path, method: str, seed: int, kimg: float, asha_samples: int) -> Path:
    data = yaml.safe_load((REPO / "tuning" / "tiny_pbt.yaml").read_text())
    data["name"] = f"{method}-seed{seed}"
    data["search"]["seed"] = seed
    data["trial"]["kimg"] = kimg
    if method == "asha":
        data["search"]["num_samples"] = asha_samples
        data["scheduler"] = {"kind": "asha", "time_attr": "trial_kimg", "grace_kimg": 0.5, "reduction_factor": 2}
    path = folder / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def curves(experiment: Path) -> list[list[tuple[float, float]]]:
    """Every trial's (kimg, objective) reports, from Tune's result files."""
    out = []
    for result in sorted(experiment.glob("run_trial_*/result.json")):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        pts = [(r["kimg"], r["objective"]) for r in rows if "objective" in r and r.get("objective_finite", True)]
        if pts:
            out.append(pts)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--kimg", type=float, default=3.0)
    ap.add_argument("--asha-samples", type=int, default=6)
    ap.add_argument("--out", default=None, help="plot (PNG)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-pbt-"))
    rows, plots = [], {}
    for seed in args.seeds:
        for method in ("pbt", "asha"):
            path = sweep_file(work, method, seed, args.kimg, args.asha_samples)
            t = time.perf_counter()
            run = subprocess.run([sys.executable, "-m", "alae_ray.cli", "tune", "--sweep", str(path), "--storage",
                                  str(work / "tune"), "--quiet", "--json"], cwd=REPO, capture_output=True, text=True)
            wall = time.perf_counter() - t
            if run.returncode != 0:
                sys.exit(f"{path.name} failed:\n{run.stderr[-3000:]}")
            summary = json.loads(run.stdout[run.stdout.index("{"):])
            trials = summary["trials"]
            done = [r["objective"] for r in trials if r["status"] == "completed" and r["objective"] is not None]
            total = sum(r["trial_kimg"] for r in trials)
            if method == "pbt":  # a member re-seeded after its last segment trains nothing more: kimg as run
                total = len(trials) * args.kimg
            rows.append((method, seed, min(done) if done else float("nan"), total, len(trials), wall))
            plots[(method, seed)] = curves(Path(summary["experiment"]))
            print(f"{method:>4} seed {seed}: best objective at {args.kimg:g} kimg {rows[-1][2]:.4f}, "
                  f"{total:.2f} kimg trained by {len(trials)} trials, {wall / 60:.1f} min", flush=True)
    print("\n| method | seed | best objective at the end | total kimg | trials | wall min |")
    print("|---|---:|---:|---:|---:|---:|")
    for m, s, best, total, n, wall in rows:
        print(f"| {m} | {s} | {best:.4f} | {total:.2f} | {n} | {wall / 60:.1f} |")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(args.seeds), figsize=(6 * len(args.seeds), 4), squeeze=False, sharey=True)
        for ax, seed in zip(axes[0], args.seeds):
            for method, colour in (("asha", "tab:orange"), ("pbt", "tab:blue")):
                for i, pts in enumerate(plots[(method, seed)]):
                    ax.plot(*zip(*pts), color=colour, alpha=0.7, marker=".", label=method if i == 0 else None)
            ax.set_title(f"seed {seed}")
            ax.set_xlabel("kimg")
            ax.set_yscale("log")
            ax.legend()
        axes[0][0].set_ylabel("objective (lower is better)")
        fig.tight_layout()
        fig.savefig(args.out, dpi=100)
        print(f"plot: {args.out}")


if __name__ == "__main__":
    main()

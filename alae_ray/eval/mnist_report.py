"""The paper's Table 2 from ``alae-ray eval --metric mnist_protocol --json`` reports, one per training seed.

    python -m alae_ray.eval.mnist_report runs/mnist/protocol-s0.json runs/mnist/protocol-s1.json

Prints Markdown: the Table-2-shaped accuracies for each seed, and the pre-stated comparison (same
writers, short features): per split, drop = acc(1NN) - acc(SVM) and d = drop(AE) - drop(ALAE), with
the decision rule of RESULTS.md applied to both seeds.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

SVMS = ("svm_c0.02", "svm_c0.1")


def trials(report: dict) -> dict[str, np.ndarray]:
    """metric name (mnist/method/features/classifier/split) -> per-split accuracies in %."""
    return {r["metric"]: 100.0 * np.asarray(r["trials"]) for r in report["results"] if r["metric"].startswith("mnist/")}


def paired(t: dict[str, np.ndarray], split: str, features: str, svm: str) -> dict:
    drop = {m: t[f"mnist/{m}/{features}/1nn/{split}"] - t[f"mnist/{m}/{features}/{svm}/{split}"] for m in ("alae", "ae_l2")}
    d = drop["ae_l2"] - drop["alae"]
    return {"alae": drop["alae"], "ae": drop["ae_l2"], "d": d, "positive": int((d > 0).sum()),
            "negative": int((d < 0).sum()), "n": len(d)}


def verdict(per_seed: list[dict]) -> str:
    """RESULTS.md's rule: supported if for every seed mean d > 0 and d > 0 in >= 4 of 5 splits;
    contradicted if for every seed mean d < 0 and d < 0 in >= 4 of 5; otherwise inconclusive."""
    if all(p["d"].mean() > 0 and p["positive"] >= 4 for p in per_seed):
        return "supported"
    if all(p["d"].mean() < 0 and p["negative"] >= 4 for p in per_seed):
        return "contradicted"
    return "inconclusive"


def ms(x: np.ndarray) -> str:
    return f"{x.mean():.2f} ± {x.std():.2f}"


def table(t: dict[str, np.ndarray], split: str) -> list[str]:
    rows = ["| method | 1NN short | 1NN long | SVM C=0.02 short | SVM C=0.02 long | SVM C=0.1 short | SVM C=0.1 long |",
            "|---|---|---|---|---|---|---|"]
    for method, name in (("alae", "ALAE"), ("ae_l2", "AE(ℓ2)"), ("pixels", "raw pixels")):
        feats = ("raw", None) if method == "pixels" else ("short", "long")
        cells = []
        for clf in ("1nn", *SVMS):
            for f in feats:
                key = f"mnist/{method}/{f}/{clf}/{split}"
                cells.append(ms(t[key]) if f is not None and key in t else "")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def report(paths: list[str]) -> str:
    seeds = [trials(json.loads(open(p).read())) for p in paths]
    out = []
    for i, t in enumerate(seeds):
        for split in ("same_writers", "different_writers"):
            if any(k.endswith(split) for k in t):
                out += [f"Seed {i}, {split.replace('_', ' ')} (accuracy %, mean ± std over the splits):", "",
                        *table(t, split), ""]
    out += ["Paired 1NN -> SVM drops (points; d = drop(AE) - drop(ALAE), positive: ALAE loses less):", "",
            "| comparison | seed | ALAE drop | AE(ℓ2) drop | d | splits with d > 0 |", "|---|---|---|---|---|---|"]
    primary = []
    for split, feats, svm, label in (("same_writers", "short", "svm_c0.02", "**primary**: same writers, short, C=0.02"),
                                      ("same_writers", "short", "svm_c0.1", "same writers, short, C=0.1"),
                                      ("same_writers", "long", "svm_c0.02", "same writers, long, C=0.02"),
                                      ("different_writers", "short", "svm_c0.02", "different writers, short, C=0.02")):
        for i, t in enumerate(seeds):
            if f"mnist/alae/{feats}/1nn/{split}" not in t:
                continue
            p = paired(t, split, feats, svm)
            if label.startswith("**primary"):
                primary.append(p)
            out.append(f"| {label} | {i} | {ms(p['alae'])} | {ms(p['ae'])} | {ms(p['d'])} | {p['positive']} / {p['n']} |")
    out += ["", f"Decision (pre-stated rule, both seeds): **{verdict(primary)}**"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alae_ray.eval.mnist_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+", help="JSON reports of alae-ray eval --metric mnist_protocol, one per seed")
    print(report(p.parse_args(argv).reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())

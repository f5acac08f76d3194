"""What a training run leaves for people: image grids, TensorBoard events, metrics and a loss plot.

No Ray here: the Ray worker calls these on rank 0, and anything else (benchmarks, notebooks) can too.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from ..core.config import ModelConfig

LOSS_KEYS = ("loss_d", "r1", "loss_g", "loss_lae")


def to_images(x: torch.Tensor, m: ModelConfig) -> torch.Tensor:
    """Model output -> [N, C, H, W] in [0, 1]; flat MLP outputs become square images."""
    if x.dim() == 2:
        side = int(math.isqrt(x.shape[1] // m.channels))
        x = x.view(x.shape[0], m.channels, side, side)
    return ((x.detach().float().cpu() - m.pixel_min) / (m.pixel_max - m.pixel_min)).clamp(0, 1)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Write a PNG grid atomically (temporary name, then rename)."""
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_image(images, tmp, nrow=nrow, padding=1, format="png")
    os.replace(tmp, path)
    return path


@torch.no_grad()
def sample_grids(model, level: int, alpha: float, z: torch.Tensor, reals: torch.Tensor, out_dir: Path,
                 tag: str, psi: float = 1.0, cutoff: int | None = None) -> list[Path]:
    """Generations from fixed z and reconstructions of fixed reals (rows: reals, reconstructions).

    G's noise is on (as in training) with the same noise images at every tick, so grids compare.
    """
    m = model.cfg
    noise = model.noise_images(level, 1, torch.Generator().manual_seed(0)) if m.kind == "style" else None
    gen = model.generate(z, level, alpha, psi=psi, cutoff=cutoff, noise=True, noise_images=noise)
    rec = model.reconstruct(reals, level, alpha, noise=True, noise_images=noise)
    n = reals.shape[0]
    pairs = torch.cat([to_images(reals, m), to_images(rec, m)])
    return [save_grid(to_images(gen, m), out_dir / f"generations_{tag}.png"),
            save_grid(pairs, out_dir / f"reconstructions_{tag}.png", nrow=n)]


def console_line(metrics: dict, max_kimg: float | None = None, bar: int = 10) -> str:
    """One tick as a person reads it; with ``max_kimg``, a bar of the run's progress in kimg."""
    losses = " ".join(f"{k}={metrics[k]:.4f}" for k in LOSS_KEYS if k in metrics)
    progress = ""
    if max_kimg:
        done = min(1.0, metrics["kimg"] / max_kimg)
        progress = f" of {max_kimg:g} [{'#' * int(done * bar):.<{bar}}] {int(done * 100):3d}%"
    return (f"kimg {metrics['kimg']:8.2f}{progress}  {metrics['resolution']:>4}px a={metrics['alpha']:.2f}  {losses}  "
            f"lr={metrics['lr']:.4g}  {metrics['sec_per_kimg']:.2f} s/kimg  {metrics['images_per_sec']:.0f} img/s")


class MetricsLog:
    """metrics.jsonl + TensorBoard scalars (+ the console line, when asked to print it here)."""

    def __init__(self, out_dir: str | Path, console: bool = False):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "metrics.jsonl"
        self.console = console
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.out_dir / "tensorboard"))
        except ImportError:  # tensorboard is a dependency; stay usable without it
            self.tb = None

    def write(self, metrics: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.tb is not None:
            step = int(round(metrics["kimg"] * 1000))
            when = metrics.get("time")  # the tick's own end: TensorBoard's wall-time axis
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and k not in ("kimg", "time"):
                    self.tb.add_scalar(k, v, step, walltime=when)
            self.tb.flush()
        if self.console:
            print(console_line(metrics), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_losses(metrics_path: str | Path, png_path: str | Path) -> Path | None:
    """Loss curves against kimg from metrics.jsonl and, below them, the validation judges' metrics
    (rows that name a checkpoint); None if there is nothing to plot."""
    rows = [json.loads(l) for l in Path(metrics_path).read_text().splitlines() if l.strip()]
    judged = [r for r in rows if "checkpoint" in r and "val_error" not in r]
    rows = [r for r in rows if "level" in r]
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    val_keys = sorted({k for r in judged for k in r if k.startswith("val_") and k not in ("val_resolution",
                                                                                           "val_seconds")})
    cols = max(len(LOSS_KEYS), len(val_keys))
    fig, axes = plt.subplots(2 if val_keys else 1, cols, figsize=(4 * cols, 6 if val_keys else 3), squeeze=False)
    changes = [r["kimg"] for a, r in zip(rows, rows[1:]) if r["level"] != a["level"]]
    curves = [(axes[0][i], rows, key) for i, key in enumerate(LOSS_KEYS)]
    curves += [(axes[1][i], judged, key) for i, key in enumerate(val_keys)]
    for ax, series, key in curves:
        ax.plot([r["kimg"] for r in series], [r.get(key, float("nan")) for r in series],
                marker="o" if series is judged else None, ms=3)
        for c in changes:
            ax.axvline(c, color="grey", lw=0.5, ls="--")
        ax.set_title(key)
        ax.set_xlabel("kimg")
    used = {id(ax) for ax, _, _ in curves}
    for ax in axes.flat:
        if id(ax) not in used:
            ax.axis("off")
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_name(f".{png_path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path


LEDGER = ".uploaded.json"  # what upload last sent: {path: [size, mtime_ns]} (dot files are not sent)


def upload(local_dir: str | Path, uri: str) -> list[str]:
    """Mirror the artifacts folder to remote storage (s3://...), so a cluster run's samples are not
    stranded on whichever node hosted rank 0. Only files new or changed since this folder's last
    upload are sent (grids are written once; the logs grow); ``workers.json`` rewritten after a
    restart is a change even at the same size. Returns what was sent."""
    from ..data.storage import resolve, write_bytes_atomic

    local_dir = Path(local_dir)
    ledger_path = local_dir / LEDGER
    try:
        sent_before = json.loads(ledger_path.read_text())
    except (OSError, ValueError):  # a folder new on this node: send everything once
        sent_before = {}
    loc = resolve(uri)
    ledger, sent = {}, []
    try:
        for path in sorted(local_dir.rglob("*")):
            rel = path.relative_to(local_dir).as_posix()
            if not path.is_file() or path.name.startswith("."):
                continue
            st = path.stat()
            if sent_before.get(rel) != [st.st_size, st.st_mtime_ns]:
                write_bytes_atomic(loc, rel, path.read_bytes())  # no directory markers: plain object writes
                sent.append(rel)
            ledger[rel] = [st.st_size, st.st_mtime_ns]
    finally:  # what was sent stays sent should a later file fail: the next upload sends only the rest
        tmp = ledger_path.with_name(f"{LEDGER}.tmp")
        tmp.write_text(json.dumps(ledger))
        os.replace(tmp, ledger_path)
    return sent


def attempt(what: str, fn, warn, tries: int = 3, wait_s: float = 1.0) -> bool:
    """Call ``fn`` up to ``tries`` times, waiting ``wait_s``, then twice that, between tries; each
    failure is ``warn(line)``ed, none is raised (samples and uploads must never stop training).
    True if it succeeded."""
    for i in range(1, tries + 1):
        try:
            fn()
            return True
        except Exception as exc:  # anything: a full disk, a storage outage, a bug in a plot
            again = f"trying again in {wait_s * 2 ** (i - 1):g} s" if i < tries else "trying again at the next checkpoint"
            warn(f"{what} failed (try {i} of {tries}: {type(exc).__name__}: {exc}); {again}".replace("\n", " "))
            if i < tries:
                time.sleep(wait_s * 2 ** (i - 1))
    return False


def restore_log(local_dir: str | Path, uri: str) -> bool:
    """After a restart on another node: continue the mirrored metrics log instead of overwriting it
    with the part written after the restart. True when there was one to continue."""
    from ..data.storage import DatasetError, read_bytes, resolve

    local = Path(local_dir) / "metrics.jsonl"
    if local.exists():
        return False
    try:
        data = read_bytes(resolve(uri), "metrics.jsonl")
    except DatasetError:
        return False
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(data)
    return True

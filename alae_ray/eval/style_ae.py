"""AE(ℓ2) with a StyleALAE's own E and G: the baseline that tells what ALAE's adversarial latent
training costs or gains in reconstruction, with everything else the same.

The same networks (a preset's E and G, F and D unused), the same progressive schedule (level, fade-in
and batch from ``core.schedule``, the reals faded as the ALAE step fades them), the same Adam (lr and
betas of the preset) and the same data; one loss, ‖x - G(E(x))‖² (mean over pixels), no noise into G.
One process, on the CPU or one GPU; the result is a checkpoint the judges and ``alae-ray eval`` read.

    python -m alae_ray.eval.style_ae --preset shapes --out runs/shapes-ae   # the embedded shapes
    python -m alae_ray.eval.style_ae --preset mnist_style_cpu --data /tmp/mnist32 --out runs/mnist-ae
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..core.config import Config, load_config
from ..core.model import ALAE
from ..core.phases import fade_reals
from ..core.pixels import from_uint8
from ..core.schedule import stage_at, total_kimg


def train_ae(cfg: Config, data: str, max_kimg: float | None = None, seed: int = 0, log=None) -> tuple[ALAE, list[dict]]:
    """Train E and G of ``cfg`` as a plain autoencoder on ``data`` (a prepared dataset); returns the
    network and one row per level and every 1,000 images (kimg, level, alpha, loss)."""
    from ..data import read_level_numpy

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = ALAE(cfg.model)
    t = cfg.train
    opt = torch.optim.Adam([*net.E.parameters(), *net.G.parameters()], lr=cfg.schedule.table("lr", cfg.schedule.start_resolution),
                           betas=(t.adam_beta1, t.adam_beta2), eps=1e-8)
    levels: dict[int, np.ndarray] = {}
    stop, seen, rows, losses = round((max_kimg if max_kimg is not None else total_kimg(cfg)) * 1000), 0, [], []
    while seen < stop:
        stage = stage_at(cfg, seen / 1000.0)
        if stage.resolution not in levels:
            levels[stage.resolution] = read_level_numpy(data, stage.resolution, "train")["image"]
        images = levels[stage.resolution]
        for group in opt.param_groups:
            group["lr"] = stage.lr
        x = fade_reals(from_uint8(torch.from_numpy(images[rng.integers(0, len(images), stage.batch)]), cfg.model),
                       stage.alpha)
        loss = torch.mean((net.decode(net.encode(x, stage.level, stage.alpha), stage.level, stage.alpha, noise=False)
                           - x) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        before, seen = seen, seen + stage.batch
        if seen // 1000 > before // 1000 or seen >= stop:
            rows.append({"kimg": seen / 1000.0, "level": stage.level, "alpha": round(stage.alpha, 4),
                         "loss": float(np.mean(losses))})
            losses = []
            if log:
                log(rows[-1])
    net.w_avg.zero_()  # no mapping was trained: generations from F(z) mean nothing here
    return net.eval(), rows


def main(argv: list[str] | None = None) -> int:
    from ..core.checkpoint import write_checkpoint

    p = argparse.ArgumentParser(prog="python -m alae_ray.eval.style_ae", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="shapes")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data", default=None, help="prepared dataset (default: the embedded shapes at the preset's size)")
    p.add_argument("--max-kimg", type=float, default=None, help="default: the preset's whole schedule")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="checkpoint folder to write (must not exist)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        print(f"style_ae: --out {out} exists; choose a new folder", file=sys.stderr)
        return 2
    cfg = load_config(args.preset, args.set)
    if cfg.model.kind != "style":
        print(f"style_ae: preset {args.preset!r} is a {cfg.model.kind} ALAE; this baseline is for StyleALAE presets "
              "(the MLP one: alae_ray.eval.mnist_models)", file=sys.stderr)
        return 2
    if args.data is None:
        from ..infra.datasets import embedded_dataset

        args.data = embedded_dataset(cfg.model.max_resolution)
    t0 = time.perf_counter()
    net, rows = train_ae(cfg, args.data, args.max_kimg, args.seed,
                         log=lambda r: print(json.dumps(r), flush=True))
    seen = round(rows[-1]["kimg"] * 1000) if rows else 0
    # inference checkpoint: the networks as the EMA copy, which is what the judges and eval load
    write_checkpoint(out, cfg, {f"ema.{k}": v for k, v in net.state_dict().items()},
                     {"images_seen": seen, "ae_l2": True, "seconds": round(time.perf_counter() - t0, 1)})
    (out / "ae_rows.json").write_text(json.dumps(rows, indent=1))
    print(f"style_ae: {seen / 1000:.2f} kimg in {time.perf_counter() - t0:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""AE(ℓ2) with a StyleALAE's own E and G: the baseline that tells what ALAE's adversarial latent
training costs or gains in reconstruction, with everything else the same.

``core.phases.AutoencoderPhases`` (the preset's E and G, one loss, ‖x - G(E(x))‖²) trained by the
core's training session, as the ALAE is: the same progressive schedule, Adam, EMA and epoch order
over the same images, on the CPU or one GPU. The result is a checkpoint the judges and
``alae-ray eval`` read (its EMA networks, as an ALAE's).

    python -m alae_ray.eval.style_ae --preset shapes --out runs/shapes-ae   # the embedded shapes
    python -m alae_ray.eval.style_ae --preset mnist_style_cpu --data /tmp/mnist32 --out runs/mnist-ae
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from ..core.config import Config, load_config
from ..core.phases import AutoencoderPhases
from ..core.pixels import from_uint8
from ..core.schedule import total_kimg
from ..core.session import TensorImages, train


def train_ae(cfg: Config, data: str, max_kimg: float | None = None, seed: int = 0,
             log=None) -> tuple[AutoencoderPhases, list[dict]]:
    """Train E and G of ``cfg`` as a plain autoencoder on ``data`` (a prepared dataset's training
    images at the preset's resolution, in memory; the lower levels by the pipeline's 2x2 averaging);
    returns the phases and one row per 1,000 images (kimg, level, alpha, loss)."""
    from ..data import read_level_numpy

    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))  # every stream, as an ALAE's
    images = read_level_numpy(data, cfg.model.max_resolution, "train")["image"]
    x = from_uint8(torch.from_numpy(images), cfg.model)
    rows: list[dict] = []

    def row(tick, _snapshot) -> None:
        rows.append({"kimg": tick.kimg, "level": tick.stage.level, "alpha": round(tick.stage.alpha, 4),
                     "loss": tick.losses["loss_ae"]})
        if log:
            log(rows[-1])

    phases = AutoencoderPhases(cfg)
    train(phases, TensorImages(x, seed=seed), max_kimg=max_kimg if max_kimg is not None else total_kimg(cfg),
          tick_kimg=1.0, callbacks=[row])
    return phases, rows


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
    phases, rows = train_ae(cfg, args.data, args.max_kimg, args.seed,
                            log=lambda r: print(json.dumps(r), flush=True))
    seen = phases.images_seen
    write_checkpoint(out, phases.cfg, phases.tensors(),  # its config: the seed it trained with
                     {**phases.progress(), "ae_l2": True, "seconds": round(time.perf_counter() - t0, 1)})
    (out / "ae_rows.json").write_text(json.dumps(rows, indent=1))
    print(f"style_ae: {seen / 1000:.2f} kimg in {time.perf_counter() - t0:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

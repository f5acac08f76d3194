"""The two autoencoders of the MNIST protocol (paper Table 2): the MLP ALAE and a plain ℓ2 autoencoder.

Both use the same MLP: E 784-1024-1024-50 and G 50-1024-1024-784 (``alae_ray.core.networks``).
The plain autoencoder is the paper's AE(ℓ2) baseline: x -> E -> G -> x̂, loss ‖x - x̂‖², nothing else.

Command line (the runs behind RESULTS.md)::

    python -m alae_ray.eval.mnist_models alae --data ../shared/data/mnist-t10k --kimg 80 --out runs/mnist-alae
    python -m alae_ray.eval.mnist_models ae   --data ../shared/data/mnist-t10k --kimg 80 --out runs/mnist-ae
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.networks import MLPEncoder, MLPGenerator

AE_STATE = "ae.safetensors"
AE_META = "ae.json"


def mnist_vectors(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float32 [N, 784] in [0, 1], the MLP ALAE's input (the authors' x / 255)."""
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).reshape(len(images), -1) / 255.0


class PlainAutoencoder(nn.Module):
    """AE(ℓ2): the ALAE's MLP encoder and generator, trained on reconstruction alone."""

    def __init__(self, in_features: int = 784, hidden: int = 1024, latent_size: int = 50):
        super().__init__()
        self.sizes = {"in_features": in_features, "hidden": hidden, "latent_size": latent_size}
        self.E = MLPEncoder(in_features, hidden, latent_size)
        self.G = MLPGenerator(latent_size, hidden, in_features)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.E(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.G(self.E(x))


def train_plain_autoencoder(x: torch.Tensor, *, kimg: float, batch: int = 128, lr: float = 0.002,
                            latent_size: int = 50, hidden: int = 1024, seed: int = 0,
                            log=None) -> PlainAutoencoder:
    """Minimise mean ‖x - G(E(x))‖² with Adam over ``kimg`` thousand images (reshuffled each epoch)."""
    torch.manual_seed(seed)
    model = PlainAutoencoder(x.shape[1], hidden, latent_size)
    # Adam(0, 0.99) as the ALAE uses, so the only difference between the two is the objective.
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.0, 0.99), eps=1e-8)
    gen = torch.Generator().manual_seed(seed)
    seen, order, pos, t0, running = 0, torch.randperm(len(x), generator=gen), 0, time.perf_counter(), []
    while seen < kimg * 1000:
        if pos + batch > len(order):
            order, pos = torch.randperm(len(x), generator=gen), 0
        xb = x[order[pos:pos + batch]]
        pos += batch
        loss = (model(xb) - xb).pow(2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += batch
        running.append(loss.item())
        if log is not None and (seen // batch) % 100 == 0:
            log(f"ae kimg {seen / 1000:.1f} loss {np.mean(running):.3f} elapsed {time.perf_counter() - t0:.0f}s")
            running = []
    return model.eval().requires_grad_(False)


def save_plain_autoencoder(model: PlainAutoencoder, directory: str | Path, info: dict) -> Path:
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / AE_STATE))
    (directory / AE_META).write_text(json.dumps({"kind": "plain_ae", **model.sizes, **info}, indent=2))
    return directory


def load_plain_autoencoder(directory: str | Path, device: str | torch.device = "cpu") -> PlainAutoencoder:
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / AE_META).is_file() or not (directory / AE_STATE).is_file():
        raise FileNotFoundError(f"{directory}: not a plain autoencoder ({AE_META} / {AE_STATE} missing)")
    meta = json.loads((directory / AE_META).read_text())
    model = PlainAutoencoder(meta["in_features"], meta["hidden"], meta["latent_size"])
    model.load_state_dict(load_file(str(directory / AE_STATE)))
    return model.to(device).eval().requires_grad_(False)


def train_mnist_alae(x: torch.Tensor, *, kimg: float, seed: int = 0, overrides: list[str] = (), log=None):
    """The MLP ALAE (preset ``mnist``) on ``x`` for ``kimg`` thousand images; returns ALAEPhases."""
    from ..core.config import load_config
    from ..core.loop import TensorImages, train
    from ..core.phases import ALAEPhases

    cfg = load_config("mnist", [f"train.seed={seed}", *overrides])
    phases = ALAEPhases(cfg)
    t0 = time.perf_counter()

    def on_tick(tick):
        if log is not None:
            losses = " ".join(f"{k} {v:.3f}" for k, v in tick.losses.items())
            log(f"alae kimg {tick.kimg:.1f} {losses} {tick.sec_per_kimg:.1f}s/kimg elapsed {time.perf_counter() - t0:.0f}s")

    train(phases, TensorImages(x, seed=seed), max_kimg=kimg, tick_kimg=4.0, on_tick=on_tick)
    return phases


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alae_ray.eval.mnist_models",
                                description="Train the MNIST-protocol autoencoders on MNIST IDX digits (labels unused).")
    p.add_argument("kind", choices=("alae", "ae"))
    p.add_argument("--data", required=True, help="folder with {split}-images-idx3-ubyte[.gz]")
    p.add_argument("--split", default="t10k")
    p.add_argument("--kimg", type=float, required=True, help="training images, thousands")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="ALAE config override")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    from ..data.idx import load_mnist

    torch.set_num_threads(args.threads)
    images, _ = load_mnist(args.data, args.split)
    x = mnist_vectors(images)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    info = {"data": str(args.data), "split": args.split, "images": len(x), "kimg": args.kimg, "seed": args.seed,
            "threads": args.threads}
    if args.kind == "alae":
        from ..core.checkpoint import write_checkpoint

        phases = train_mnist_alae(x, kimg=args.kimg, seed=args.seed, overrides=args.set, log=log)
        info["wall_s"] = round(time.perf_counter() - t0, 1)
        write_checkpoint(args.out, phases.cfg, phases.tensors(), {**phases.progress(), "train": info})
    else:
        model = train_plain_autoencoder(x, kimg=args.kimg, seed=args.seed, log=log)
        info["wall_s"] = round(time.perf_counter() - t0, 1)
        save_plain_autoencoder(model, args.out, info)
    log(f"done {args.kind}: {json.dumps(info)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The two autoencoders of the MNIST protocol (paper Table 2): the MLP ALAE and a plain ℓ2 autoencoder.

Both use the same MLP: E 784-1024-1024-50 and G 50-1024-1024-784 (``alae_ray.core.networks``).
The plain autoencoder is the paper's AE(ℓ2) baseline: x -> E -> G -> x̂, loss ‖x - x̂‖², nothing else.

Command line (the runs behind RESULTS.md; the same command again resumes an interrupted run)::

    python -m alae_ray.eval.mnist_models alae --data ../shared/data/mnist-t10k --kimg 4000 --seed 0 --out runs/mnist/alae-s0
    python -m alae_ray.eval.mnist_models ae   --data ../shared/data/mnist-t10k --kimg 4000 --seed 0 --out runs/mnist/ae-s0
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
AE_RESUME = "resume.safetensors"  # optimizer moments, RNG states, the epoch's order


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
                            latent_size: int = 50, hidden: int = 1024, seed: int = 0, log=None,
                            out: str | Path | None = None, checkpoint_kimg: float = 100.0) -> PlainAutoencoder:
    """Minimise mean ‖x - G(E(x))‖² with Adam over ``kimg`` thousand images (reshuffled each epoch).

    With ``out``, the whole training state is saved there every ``checkpoint_kimg`` and at the end,
    and a state found there is resumed: an interrupted run continues where it stopped, exactly.
    """
    torch.manual_seed(seed)
    model = PlainAutoencoder(x.shape[1], hidden, latent_size)
    # Adam(0, 0.99) as the ALAE uses, so the only difference between the two is the objective.
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.0, 0.99), eps=1e-8)
    gen = torch.Generator().manual_seed(seed)
    seen, order, pos, wall = 0, torch.randperm(len(x), generator=gen), 0, 0.0
    run = {"kimg": kimg, "batch": batch, "lr": lr, "seed": seed, "images": len(x)}
    if out is not None and (Path(out) / AE_RESUME).is_file():
        from safetensors.torch import load_file

        meta = json.loads((Path(out) / AE_META).read_text())
        if {k: meta["run"][k] for k in run if k != "kimg"} != {k: v for k, v in run.items() if k != "kimg"}:
            raise ValueError(f"{out}: holds a run with other settings ({meta['run']}); use another --out")
        model.load_state_dict(load_file(str(Path(out) / AE_STATE)))
        state = load_file(str(Path(out) / AE_RESUME))
        opt.load_state_dict(_unflatten_adam(opt, state))
        gen.set_state(state["rng.order"])
        torch.set_rng_state(state["rng.torch"])
        order, pos, seen, wall = state["order"].long(), meta["progress"]["pos"], meta["progress"]["seen"], meta["progress"]["wall_s"]
        if log is not None:
            log(f"ae resumed at kimg {seen / 1000:.1f}")
    t0, running = time.perf_counter() - wall, []
    next_ckpt = (seen // round(checkpoint_kimg * 1000) + 1) * round(checkpoint_kimg * 1000)
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
        if out is not None and (seen >= next_ckpt or seen >= kimg * 1000):
            next_ckpt += round(checkpoint_kimg * 1000)
            progress = {"seen": seen, "pos": pos, "wall_s": round(time.perf_counter() - t0, 1)}
            state = {**_flatten_adam(opt), "rng.order": gen.get_state(), "rng.torch": torch.get_rng_state(),
                     "order": order}
            save_plain_autoencoder(model, out, {"run": run, "progress": progress}, resume=state)
    return model.eval().requires_grad_(False)


def _flatten_adam(opt: torch.optim.Adam) -> dict[str, torch.Tensor]:
    return {f"opt.{i}.{k}": (v if torch.is_tensor(v) else torch.tensor(v))
            for i, st in opt.state_dict()["state"].items() for k, v in st.items()}


def _unflatten_adam(opt: torch.optim.Adam, state: dict[str, torch.Tensor]) -> dict:
    sd = opt.state_dict()
    sd["state"] = {}
    for key, v in state.items():
        if key.startswith("opt."):
            _, i, k = key.split(".", 2)
            sd["state"].setdefault(int(i), {})[k] = v
    return sd


def save_plain_autoencoder(model: PlainAutoencoder, directory: str | Path, info: dict,
                           resume: dict[str, torch.Tensor] | None = None) -> Path:
    """Weights and a JSON description (plus, for resuming, the optimizer and RNG states), atomically."""
    from safetensors.torch import save_file

    from ..core.checkpoint import atomic_directory

    with atomic_directory(directory) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / AE_STATE))
        (tmp / AE_META).write_text(json.dumps({"kind": "plain_ae", **model.sizes, **info}, indent=2))
        if resume is not None:
            save_file({k: v.contiguous() for k, v in resume.items()}, str(tmp / AE_RESUME))
    return Path(directory)


def load_plain_autoencoder(directory: str | Path, device: str | torch.device = "cpu") -> PlainAutoencoder:
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / AE_META).is_file() or not (directory / AE_STATE).is_file():
        raise FileNotFoundError(f"{directory}: not a plain autoencoder ({AE_META} / {AE_STATE} missing)")
    meta = json.loads((directory / AE_META).read_text())
    model = PlainAutoencoder(meta["in_features"], meta["hidden"], meta["latent_size"])
    model.load_state_dict(load_file(str(directory / AE_STATE)))
    return model.to(device).eval().requires_grad_(False)


def train_mnist_alae(x: torch.Tensor, *, kimg: float, seed: int = 0, overrides: list[str] = (), log=None,
                     out: str | Path | None = None, checkpoint_kimg: float = 100.0):
    """The MLP ALAE (preset ``mnist``) on ``x`` for ``kimg`` thousand images; returns ALAEPhases.

    With ``out``, a checkpoint is written there every ``checkpoint_kimg`` and at the end, and a
    checkpoint found there is resumed exactly (networks, Adam, RNG streams, position in the data).
    """
    from ..core.checkpoint import is_checkpoint, read_checkpoint, write_checkpoint
    from ..core.config import load_config
    from ..core.pacing import CheckpointPacer
    from ..core.phases import ALAEPhases
    from ..core.session import Session, TensorImages

    cfg = load_config("mnist", [f"train.seed={seed}", *overrides])
    session = Session(ALAEPhases(cfg), TensorImages(x, seed=seed), max_kimg=kimg, tick_kimg=4.0)
    phases, wall = session.phases, 0.0
    if out is not None and is_checkpoint(out):
        saved, tensors, progress = read_checkpoint(out)
        if saved != cfg or progress.get("train", {}).get("images") != len(x):
            raise ValueError(f"{out}: holds a run with another config or dataset; use another --out")
        session.restore(tensors, progress)
        wall = float(progress["train"]["wall_s"])
        if log is not None:
            log(f"alae resumed at kimg {phases.kimg:.1f}")
    if out is not None:
        session.pacer = CheckpointPacer(round(checkpoint_kimg * 1000), phases.images_seen)
    t0 = time.perf_counter() - wall

    def on_tick(tick, snapshot) -> None:
        if log is not None:
            losses = " ".join(f"{k} {v:.3f}" for k, v in tick.losses.items())
            log(f"alae kimg {tick.kimg:.1f} {losses} {tick.sec_per_kimg:.1f}s/kimg elapsed {time.perf_counter() - t0:.0f}s")
        if snapshot is not None:
            info = {"images": len(x), "kimg": kimg, "seed": seed, "wall_s": round(time.perf_counter() - t0, 1)}
            write_checkpoint(out, cfg, snapshot.tensors, {**snapshot.progress, "train": info})

    session.callbacks.append(on_tick)
    return session.run()


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
    p.add_argument("--out", required=True, help="where the model goes; a run saved there is resumed")
    p.add_argument("--checkpoint-kimg", type=float, default=100.0, help="save the whole state this often")
    args = p.parse_args(argv)
    from ..data.idx import load_mnist

    torch.set_num_threads(args.threads)
    images, _ = load_mnist(args.data, args.split)
    x = mnist_vectors(images)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    if args.kind == "alae":
        train_mnist_alae(x, kimg=args.kimg, seed=args.seed, overrides=args.set, log=log, out=args.out,
                         checkpoint_kimg=args.checkpoint_kimg)
        info = json.loads((Path(args.out) / "progress.json").read_text())["train"]
    else:
        train_plain_autoencoder(x, kimg=args.kimg, seed=args.seed, log=log, out=args.out,
                                checkpoint_kimg=args.checkpoint_kimg)
        info = json.loads((Path(args.out) / AE_META).read_text())["progress"]
    log(f"done {args.kind}: {json.dumps(info)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

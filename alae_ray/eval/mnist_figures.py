"""The paper's MNIST figures from trained models: reconstructions (Figure 3) and traversals (Figure 4).

    python -m alae_ray.eval.mnist_figures --alae runs/mnist/alae-s0 --ae runs/mnist/ae-s0 \\
        --data ../shared/data/mnist-t10k --out docs/results

``mnist_reconstructions.png``: real digits (top row), ALAE reconstructions G(E(x)) (middle; the EMA
networks), AE(ℓ2) reconstructions (bottom). ``mnist_traversals.png``: for pairs of generated digits
(z from seeds), rows alternate between interpolating z linearly and mapping each point through F
("in Z"), and interpolating w = F(z) linearly ("in W"), the authors' two traversals between the same
two endpoints.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch


def _save(images: torch.Tensor, path: Path, nrow: int) -> Path:
    """[N, 1, 28, 28] in [0, 1] as a PNG grid, written under a temporary name, then renamed."""
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_image(images.clamp(0, 1), tmp, nrow=nrow, padding=2, pad_value=1.0, format="png")
    os.replace(tmp, path)
    return path


@torch.no_grad()
def reconstructions(alae, ae, images: np.ndarray) -> torch.Tensor:
    """Rows: reals, ALAE reconstructions, AE(ℓ2) reconstructions; [3N, 1, 28, 28] in [0, 1]."""
    from .mnist_models import mnist_vectors

    x = mnist_vectors(images)  # [N, 784] in [0, 1]
    rows = [x, (alae.reconstruct(images) + 1) / 2, ae(x)]
    return torch.cat([r.reshape(len(x), 1, 28, 28).cpu().float() for r in rows])


@torch.no_grad()
def traversals(alae, seeds: list[tuple[int, int]], steps: int) -> torch.Tensor:
    """For each pair of seeds, a row interpolated in Z and a row interpolated in W; [2 P steps, 1, 28, 28]."""
    t = torch.linspace(0, 1, steps)[:, None]
    rows = []
    for a, b in seeds:
        za, zb = alae.latents([a, b])
        z = (1 - t) * za + t * zb
        wa, wb = alae.network.F(torch.stack([za, zb]))
        rows += [alae.decode(alae.network.F(z)), alae.decode((1 - t) * wa + t * wb)]
    return (torch.cat(rows).cpu() + 1) / 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alae_ray.eval.mnist_figures", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--alae", required=True, help="MLP ALAE checkpoint (python -m alae_ray.eval.mnist_models alae)")
    p.add_argument("--ae", required=True, help="plain autoencoder (python -m alae_ray.eval.mnist_models ae)")
    p.add_argument("--data", required=True, help="MNIST IDX folder")
    p.add_argument("--split", default="t10k")
    p.add_argument("--count", type=int, default=16, help="digits in the reconstruction figure")
    p.add_argument("--pairs", type=int, default=4, help="pairs of endpoints in the traversal figure")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", required=True, help="folder for the PNGs")
    args = p.parse_args(argv)
    from ..api import load
    from ..data.idx import load_mnist
    from .mnist_models import load_plain_autoencoder

    images, _ = load_mnist(args.data, args.split)
    alae = load(args.alae, device="cpu")
    ae = load_plain_autoencoder(args.ae)
    out = Path(args.out)
    rec = _save(reconstructions(alae, ae, images[:args.count]), out / "mnist_reconstructions.png", args.count)
    pairs = [(2 * i + 1, 2 * i + 2) for i in range(args.pairs)]
    trav = _save(traversals(alae, pairs, args.steps), out / "mnist_traversals.png", args.steps)
    print(f"wrote {rec} and {trav}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

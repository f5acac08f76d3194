"""Learning, not just running: the MLP ALAE of §7.1 on real digits, on CPU, in about a minute."""

import math
from pathlib import Path

import pytest
import torch

from alae_ray.core.config import load_config
from alae_ray.core.phases import ALAEPhases
from alae_ray.core.session import TensorImages, train
from alae_ray.data.idx import load_mnist

MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist-t10k"
KIMG = 100  # ~780 iterations of the paper's batch 128


def digits():
    images, _ = load_mnist(MNIST, "t10k")
    x = torch.from_numpy(images.copy()).float().div(255.0).flatten(1)  # [N, 784] in [0, 1], the authors' range
    return x[:8000], x[8000:]


@pytest.mark.parametrize("seed", [0])
def test_mlp_alae_learns_digits(seed):
    torch.set_num_threads(2)
    train_x, held_out = digits()
    cfg = load_config("mnist", [f"train.seed={seed}"])
    phases = ALAEPhases(cfg)
    ticks = []
    train(phases, TensorImages(train_x, seed=seed), max_kimg=KIMG, tick_kimg=KIMG / 10,
          callbacks=[lambda t, _: ticks.append(t.losses)])
    first, last = ticks[0]["loss_lae"], ticks[-1]["loss_lae"]
    assert all(math.isfinite(v) for t in ticks for v in t.values())
    assert last < 0.6 * first, (first, last)  # latent reciprocity well below its start
    with torch.no_grad():
        x = held_out[:500]
        rec = phases.ema.reconstruct(x, 0)
        d = torch.cdist(rec, x).pow(2) / x.shape[1]  # pixel MSE of every reconstruction to every input
    own = d.diag().mean()
    others = (d.sum() - d.diag().sum()) / (d.numel() - d.shape[0])
    assert own < 0.95 * others, (own.item(), others.item())

"""A core ``ALAE`` as the judges see it: uint8 images in, uint8 images out, G's noise fixed (seed 0)
as in the training grids, so that a model is judged the same way every time."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..core.pixels import from_uint8, to_uint8


def _setup(network, level: int):
    """(config, device, G's fixed noise, channels, side) of a network at ``level``."""
    m = network.cfg
    noise = None if m.kind == "mlp" else network.noise_images(level, 1, torch.Generator().manual_seed(0))
    side = int(round(m.mlp_input ** 0.5)) if m.kind == "mlp" else 4 * 2**level
    return m, network.w_avg.device, noise, m.channels, side


def reconstructor(network, level: int, alpha: float = 1.0, chunk: int = 32) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 [N, C, R, R] -> G(E(x)) as uint8 [N, C, R, R], at ``level``."""
    m, device, noise, c, r = _setup(network, level)

    @torch.no_grad()
    def reconstruct(images: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(images), chunk):
            x = from_uint8(torch.from_numpy(np.ascontiguousarray(images[i:i + chunk])), m).to(device)
            y = network.reconstruct(x, level, alpha, noise=True, noise_images=noise)
            out.append(to_uint8(y, m).reshape(len(x), c, r, r).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, c, r, r), np.uint8)

    return reconstruct


def generator(network, level: int, seed: int = 0, psi: float = 1.0, chunk: int = 64) -> Callable[[int], np.ndarray]:
    """n -> G(F(z)) as uint8 [n, C, R, R] for z drawn from ``seed`` (the same n, the same images)."""
    m, device, noise, c, r = _setup(network, level)

    @torch.no_grad()
    def generate(n: int) -> np.ndarray:
        z = torch.randn(n, m.latent_size, generator=torch.Generator().manual_seed(seed))
        out = [to_uint8(network.generate(z[i:i + chunk].to(device), level, psi=psi, noise=True, noise_images=noise),
                        m).reshape(-1, c, r, r).cpu().numpy() for i in range(0, n, chunk)]
        return np.concatenate(out) if out else np.zeros((0, c, r, r), np.uint8)

    return generate

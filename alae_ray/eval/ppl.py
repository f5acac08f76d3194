"""Perceptual path length (Karras et al. 2019, StyleGAN §4.1), as StyleGAN's metric computes it.

For pairs of latents, interpolate at t and t + ε (slerp in Z, lerp in W), generate both images,
and take d(G(t), G(t + ε)) / ε². ``sampling="full"`` draws t ~ U(0, 1); ``"end"`` uses t = 0. The
reported value is the mean over distances between the 1st and 99th percentiles. Images can be
centre-cropped as StyleGAN does for faces, and are box-downsampled to 256 px when larger.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

Tensor = torch.Tensor


def normalize(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation between the directions of a and b; t [N] or [N, 1]; unit-norm result."""
    a, b = normalize(a), normalize(b)
    t = t.reshape(-1, 1).to(a.dtype)
    d = (a * b).sum(-1, keepdim=True)
    p = t * torch.acos(d.clamp(-1.0, 1.0))
    c = normalize(b - d * a)
    return normalize(a * torch.cos(p) + c * torch.sin(p))


def lerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    return a + (b - a) * t.reshape(-1, *([1] * (a.dim() - 1))).to(a.dtype)


def crop_faces(images: Tensor) -> Tensor:
    """StyleGAN's face crop: rows 3/8..7/8, columns 2/8..6/8."""
    c = images.shape[2] // 8
    return images[:, :, c * 3:c * 7, c * 2:c * 6]


def downsample_to_256(images: Tensor) -> Tensor:
    factor = images.shape[2] // 256
    if factor <= 1:
        return images
    n, ch, h, w = images.shape
    return images.reshape(n, ch, h // factor, factor, w // factor, factor).mean((3, 5))


def interpolation_times(n: int, sampling: str, gen: torch.Generator, dtype=torch.float64) -> Tensor:
    if sampling not in ("full", "end"):
        raise ValueError(f"PPL sampling must be 'full' or 'end', got {sampling!r}")
    t = torch.rand(n, generator=gen, dtype=dtype)
    return t if sampling == "full" else torch.zeros_like(t)


def path_distances(z0: Tensor, z1: Tensor, t: Tensor, *, space: str, eps: float,
                   mapping: Callable[[Tensor], Tensor], synthesize: Callable[[Tensor], Tensor],
                   distance: Callable[[Tensor, Tensor], Tensor], crop: bool = False) -> Tensor:
    """d(G(t), G(t + ε)) / ε² for each pair (z0[i], z1[i]) at t[i]; returns [N] float64 (CPU)."""
    if space == "z":
        za, zb = slerp(z0, z1, t), slerp(z0, z1, t + eps)
        wa, wb = mapping(za), mapping(zb)
    elif space == "w":
        w0, w1 = mapping(z0), mapping(z1)
        wa, wb = lerp(w0, w1, t), lerp(w0, w1, t + eps)
    else:
        raise ValueError(f"PPL space must be 'z' or 'w', got {space!r}")
    images = synthesize(torch.cat([wa, wb]))
    if crop:
        images = crop_faces(images)
    images = downsample_to_256(images)
    a, b = images.chunk(2)
    return distance(a, b).double().cpu() / eps**2


def filtered_mean(distances: np.ndarray, low: float = 1.0, high: float = 99.0) -> float:
    """Mean of the distances between the ``low`` and ``high`` percentiles (StyleGAN's outlier rule)."""
    d = np.asarray(distances, dtype=np.float64)
    lo = np.percentile(d, low, method="lower")
    hi = np.percentile(d, high, method="higher")
    return float(d[(d >= lo) & (d <= hi)].mean())


@dataclass
class PPLResult:
    space: str
    sampling: str
    value: float  # filtered mean
    unfiltered_mean: float
    count: int
    eps: float


def gaussian_pairs(gen: torch.Generator, n: int, latent_size: int, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    z = torch.randn(2 * n, latent_size, generator=gen, dtype=dtype)
    return z[:n], z[n:]


def chunk_distances(*, mapping, synthesize, distance, latent_size: int, start: int, count: int, space: str,
                    sampling: str, eps: float, seed: int, crop: bool = False, sample_pairs=None) -> np.ndarray:
    """Distances of pairs start..start+count-1; the draws depend only on (seed, start), not on who runs it."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + start) % (2**63))
    z0, z1 = (sample_pairs or (lambda g, k: gaussian_pairs(g, k, latent_size)))(gen, count)
    t = interpolation_times(count, sampling, gen, dtype=z0.dtype)
    return path_distances(z0, z1, t, space=space, eps=eps, mapping=mapping, synthesize=synthesize,
                          distance=distance, crop=crop).numpy()


def summarize(distances: np.ndarray, space: str, sampling: str, eps: float) -> PPLResult:
    d = np.asarray(distances, dtype=np.float64)
    return PPLResult(space, sampling, filtered_mean(d), float(d.mean()), len(d), eps)


def perceptual_path_length(*, mapping: Callable[[Tensor], Tensor], synthesize: Callable[[Tensor], Tensor],
                           distance: Callable[[Tensor, Tensor], Tensor], latent_size: int, n: int,
                           space: str, sampling: str, eps: float = 1e-4, batch: int = 64, seed: int = 0,
                           crop: bool = False, sample_pairs=None) -> PPLResult:
    """PPL over ``n`` latent pairs; ``sample_pairs(gen, count) -> (z0, z1)`` defaults to N(0, I) pairs."""
    parts = [chunk_distances(mapping=mapping, synthesize=synthesize, distance=distance, latent_size=latent_size,
                             start=s, count=min(batch, n - s), space=space, sampling=sampling, eps=eps, seed=seed,
                             crop=crop, sample_pairs=sample_pairs)
             for s in range(0, n, batch)]
    return summarize(np.concatenate(parts), space, sampling, eps)

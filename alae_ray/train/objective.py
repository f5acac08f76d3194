"""Tuning objectives: pure functions of the EMA model and a fixed held-out batch, plus the small
stateful ``Evaluator`` the Ray Train worker calls at every tick when a sweep asks for an objective.

``recon`` (the default, cheap): ``objective = rec + lae_weight * lae`` where

* ``rec`` is the mean squared error (images in [-1, 1]) between held-out reals and their EMA
  reconstructions G(E(x)) at the current level and fade-in alpha (noise off), and
* ``lae`` is the latent reciprocity error of the EMA model on fixed z: ``|E(G(w)) - w|^2`` for
  w = F(z), divided by the variance of w over the batch (so it is scale-free and a collapsed
  mapping cannot make it small).

Both move with quality: an exploding or collapsing run has large errors. Lower is better.

``shapes`` (procedural shapes and an RGB StyleALAE): the shapes judge (``alae_ray.judges.shapes``) of
the EMA model's reconstructions of held-out renders at the current level: ``objective`` is the share of
the blind guess's error left, averaged over position, hue, scale, rotation and shape class (0: exact,
1: blind), with each factor beside it. The judge's own measures, not a held-out batch of the data.

``fid`` (when configured): the Fréchet Inception distance between ``fid_samples`` EMA generations
(psi = 1, noise off, fixed z) and the held-out reals of the current level, using
``alae_ray.eval``'s Inception network (local weights: ``inception_weights`` or the usual
``ALAE_RAY_INCEPTION_WEIGHTS`` / torch.hub cache). Small samples make FID biased upwards; compare
trials with each other, not with published numbers.

A non-finite objective (a diverged trial) is reported as ``DIVERGED`` (a large finite number), so a
scheduler ranks it worst instead of choking on NaN; ``objective_finite`` says which it was.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from ..core.config import ModelConfig
from ..core.layers import downsample_to
from ..core.phases import fade_reals
from ..core.pixels import from_uint8

OBJECTIVES = ("recon", "fid", "shapes")
DIVERGED = 1e9  # reported instead of NaN/inf (mode "min": the worst possible)


def sanitize(value: float, bad: float = DIVERGED) -> float:
    """``value`` if finite, else ``bad``."""
    value = float(value)
    return value if math.isfinite(value) else bad




def fixed_latents(n: int, latent_size: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The same z every time (own generator: the training RNG streams are not touched)."""
    return torch.randn(n, latent_size, generator=torch.Generator().manual_seed(seed)).to(device)


@torch.no_grad()
def reconstruction_error(model, x: torch.Tensor, level: int, alpha: float) -> float:
    """Mean squared error of G(E(x)) against x (faded like the training reals during a fade-in)."""
    target = fade_reals(x, alpha)
    rec = model.reconstruct(target, level, alpha, noise=False)
    return float((rec.float() - target.float()).pow(2).mean())


@torch.no_grad()
def latent_reciprocity_error(model, z: torch.Tensor, level: int, alpha: float) -> float:
    """``mean |E(G(F(z))) - F(z)|^2 / mean Var(F(z))``: relative latent reciprocity error."""
    w = model.F(z)
    w_rec = model.E(model.decode(w, level, alpha, noise=False), level, alpha)
    var = w.float().var(0, unbiased=False).mean()
    return float((w_rec.float() - w.float()).pow(2).mean() / (var + 1e-8))


def recon_objective(model, reals: torch.Tensor, z: torch.Tensor, level: int, alpha: float,
                    lae_weight: float = 1.0) -> dict[str, float]:
    """The default objective and its parts (``obj_rec``, ``obj_lae``); lower is better."""
    rec = reconstruction_error(model, reals, level, alpha)
    lae = latent_reciprocity_error(model, z, level, alpha)
    total = rec + lae_weight * lae
    return {"objective": sanitize(total), "objective_finite": math.isfinite(total),
            "obj_rec": sanitize(rec), "obj_lae": sanitize(lae)}


@torch.no_grad()
def generated_features(model, z: torch.Tensor, level: int, alpha: float,
                       features: Callable[[torch.Tensor], torch.Tensor], batch: int = 64) -> np.ndarray:
    """Features [N, D] of EMA generations from fixed z (psi = 1, noise off)."""
    out = [features(model.generate(z[i:i + batch], level, alpha, noise=False)) for i in range(0, len(z), batch)]
    return torch.cat(out).double().cpu().numpy()


@torch.no_grad()
def real_statistics(reals: torch.Tensor, features: Callable[[torch.Tensor], torch.Tensor],
                    batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    from ..metrics.frechet import feature_statistics

    f = torch.cat([features(reals[i:i + batch]) for i in range(0, len(reals), batch)]).detach().double().cpu().numpy()
    return feature_statistics(f)


def fid_objective(model, z: torch.Tensor, level: int, alpha: float, real_mu: np.ndarray, real_sigma: np.ndarray,
                  features: Callable[[torch.Tensor], torch.Tensor], batch: int = 64) -> dict[str, float]:
    """FID of generations from ``z`` against the held-out reals' statistics; lower is better."""
    from ..metrics.frechet import frechet_distance_to_features

    f = generated_features(model, z, level, alpha, features, batch)
    fid = frechet_distance_to_features(f, real_mu, real_sigma) if np.isfinite(f).all() else math.nan
    return {"objective": sanitize(fid), "objective_finite": math.isfinite(fid), "obj_fid": sanitize(fid)}


class Evaluator:
    """Called on rank 0 at every tick: ``evaluator(ema_model, stage) -> metrics``.

    ``spec`` is the sweep's objective section as a dict (``kind``, ``held_out``, ``lae_weight``,
    ``seed``, ``fid_samples``, ``inception_weights``); ``held_out`` maps resolution -> uint8 images.
    """

    def __init__(self, spec: dict, held_out: dict, model: ModelConfig, device: torch.device | str = "cpu"):
        kind = spec.get("kind", "recon")
        if kind not in OBJECTIVES:
            raise ValueError(f"objective.kind must be one of {', '.join(OBJECTIVES)}, got {kind!r}")
        self.spec, self.kind, self.device, self.model = spec, kind, torch.device(device), model
        self.held_out = {int(r): v for r, v in held_out.items()}
        n = int(spec.get("fid_samples", 256) if kind == "fid" else spec.get("held_out", 32))
        self.z = fixed_latents(n, model.latent_size, int(spec.get("seed", 0)), self.device)
        self._features = None
        self._real_stats: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._classifiers: dict = {}

    def reals(self, resolution: int) -> torch.Tensor:
        key = resolution if resolution in self.held_out else max(self.held_out)
        x = from_uint8(torch.as_tensor(np.asarray(self.held_out[key])).to(self.device), self.model)
        if x.dim() == 4:  # a level without its own held-out images
            x = downsample_to(x, resolution)
        return x.flatten(1) if self.model.kind == "mlp" else x

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if self._features is None:
            from ..metrics.networks import inception_features, load_inception

            net = load_inception(self.device, self.spec.get("inception_weights"))
            self._features = lambda x: inception_features(net, x)
        return self._features(images)

    def __call__(self, model, stage) -> dict[str, float]:
        if self.kind == "shapes":
            return self.shapes(model, stage)
        if self.kind == "recon":
            return recon_objective(model, self.reals(stage.resolution), self.z, stage.level, stage.alpha,
                                   float(self.spec.get("lae_weight", 1.0)))
        if stage.resolution not in self._real_stats:
            self._real_stats[stage.resolution] = real_statistics(self.reals(stage.resolution), self.features)
        mu, sigma = self._real_stats[stage.resolution]
        return fid_objective(model, self.z, stage.level, stage.alpha, mu, sigma, self.features)

    def shapes(self, model, stage) -> dict[str, float]:
        from ..judges import shapes

        if stage.resolution not in self._classifiers:  # fitted once per level (renders, no training)
            self._classifiers[stage.resolution] = shapes.ShapeClassifier.fit(stage.resolution)
        j = shapes.judge(shapes.network_reconstructor(model, stage.level, stage.alpha), stage.resolution,
                         classifier=self._classifiers[stage.resolution])
        return {"objective": sanitize(j.left), "objective_finite": math.isfinite(j.left),
                **{f"obj_{s.factor}": sanitize(s.reconstructions) for s in j.scores}}


def held_out_images(manifest, resolutions: list[int], count: int) -> dict[int, np.ndarray]:
    """The first ``count`` images of the test split (train if the test split is too small) at each
    resolution: a fixed batch, read from the first shard(s) only."""
    from ..data.reader import read_first_rows

    out = {}
    for res in resolutions:
        split = "test" if manifest.count(res, "test") >= min(count, 8) else "train"
        images = read_first_rows(manifest, res, split, count)["image"]
        if not len(images):
            raise ValueError(f"{manifest.uri}: no images at {res}px for the tuning objective")
        out[res] = np.ascontiguousarray(images)
    return out



"""The model side of serving in plain PyTorch (no Ray): the Python API with NumPy in and out.

Images cross this boundary as uint8 [N, R, R, 3] arrays and latent codes as float32 arrays, so a
Serve replica ships nothing but NumPy. Everything from weights to pixels is ``alae_ray.api.Model``:
G's noise is on (as in the authors' demos) with fixed noise images, so one code always maps to one
image and a seed always gives the same face.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from alae_ray.api import MAX_FORWARD, Model, load, pick_device  # noqa: F401  (pick_device: this module's API)
from alae_ray.core.bands import describe_bands
from alae_ray.core.checkpoint import CheckpointError


class Engine:
    """An ``alae_ray.api.Model`` (``engine.model``: level, resolution, style inputs...) with batched,
    NumPy-in/NumPy-out maps."""

    def __init__(self, model: Model, lpips: torch.nn.Module | None = None):
        if model.mlp:
            raise CheckpointError(f"checkpoint {model.name!r}: serving needs a StyleALAE checkpoint, this one is 'mlp'")
        self.model = model
        self.lpips = lpips  # refinement's perceptual term, when its weights are on this machine

    def info(self) -> dict:
        """What clients need to know (JSON-ready, no server paths)."""
        m, t = self.model, self.model.cfg.train
        return {"checkpoint": m.name, "preset": m.cfg.name, "resolution": m.resolution,
                "latent_size": m.latent_size, "style_layers": m.style_layers, "level": m.level,
                "num_levels": m.num_levels, "images_seen": m.progress.get("images_seen"),
                "truncation_psi": t.truncation_psi, "truncation_cutoff": min(t.truncation_cutoff, m.style_layers),
                "device": m.device.type, "bands": describe_bands(m.num_levels),
                "refine_loss": "pixel + LPIPS" if self.lpips is not None else "pixel"}

    def _uint8(self, images, n: int) -> np.ndarray:
        """uint8 [n, R, R, 3] from ``images(slice)`` -> [-1, 1] images, one forward chunk at a time: each
        chunk becomes uint8 before the next, so float32 outputs never pile up (12 MB an image at 1024)."""
        return np.concatenate([self.model.to_uint8(images(slice(i, i + MAX_FORWARD))) for i in range(0, n, MAX_FORWARD)])

    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, R, R, 3] -> w float32 [N, L]."""
        return self.model.encode(images).cpu().numpy()

    def synthesize(self, ws: np.ndarray) -> np.ndarray:
        """w float32 [N, L] or per-style-input codes [N, S, L] -> uint8 [N, R, R, 3]."""
        ws = np.ascontiguousarray(ws, dtype=np.float32)
        return self._uint8(lambda s: self.model.decode(ws[s]), len(ws))

    def reconstruct(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [N, R, R, 3] -> (G(E(x)) uint8 [N, R, R, 3], w float32 [N, L])."""
        w = self.model.encode(images)
        return self._uint8(lambda s: self.model.decode(w[s]), len(w)), w.cpu().numpy()

    def generate(self, seeds: np.ndarray, psis: np.ndarray) -> np.ndarray:
        """G(truncate(F(z(seed)), psi)) as uint8 [N, R, R, 3], each seed with its own psi (truncating the
        model's first ``truncation_cutoff`` style inputs)."""
        seeds, psis = [int(s) for s in seeds], np.asarray(psis, np.float32)  # a seed fixes its image's noise too
        return self._uint8(lambda s: self.model.generate(seeds[s], psi=psis[s]), len(seeds))

    def directions(self, k: int) -> np.ndarray:
        """The ``k`` strongest unsupervised edit directions in W (SeFa), float32 [k, L], unit length."""
        return self.model.directions(k).cpu().numpy()

    def refine(self, image: np.ndarray, steps: int, progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One image uint8 [R, R, 3] -> (encoder's G(E(x)), refined reconstruction) as uint8 [R, R, 3] and
        their pixel errors [2] (mean squared, in [-1, 1] units): w = E(x) optimised ``steps`` times,
        ``progress(step, loss)`` called after each step."""
        x = self.model.images(image[None])
        rec = self.model.reconstruct(x)
        _, refined = self.model.refine(x, steps=steps, progress=progress, lpips=self.lpips)
        mse = np.asarray([float((y.float() - x).pow(2).mean()) for y in (rec, refined)], np.float32)
        return self.model.to_uint8(rec)[0], self.model.to_uint8(refined)[0], mse


def open_engine(uri: str, *, device: str = "auto", level: int | None = None, lpips: bool = True) -> Engine:
    """An Engine from a local or ``s3://`` checkpoint or run directory; CheckpointError names it.
    ``lpips``: refine with LPIPS besides the pixel loss when its weights are already on this machine
    (a replica never downloads them)."""
    name = str(uri) if str(uri).startswith("s3://") else os.path.basename(os.path.normpath(str(uri)))
    model = load(uri, device=device, level=level)
    model.name = name
    return Engine(model, local_lpips(model.device) if lpips else None)


def local_lpips(device: torch.device) -> torch.nn.Module | None:
    """LPIPS-VGG16 from local weight files (``alae_ray.metrics.networks``'s places), else None."""
    from alae_ray.metrics.networks import find_weight_file, load_lpips

    vgg, linear = find_weight_file("vgg"), find_weight_file("lpips")
    return load_lpips(device, vgg, linear) if vgg and linear else None


def lerp_codes(w_a: np.ndarray, w_b: np.ndarray, steps: int) -> np.ndarray:
    """[steps, L]: from w_a to w_b inclusive, evenly spaced (the paper interpolates in W linearly)."""
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    return ((1 - t) * w_a[None] + t * w_b[None]).astype(np.float32)

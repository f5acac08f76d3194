"""The model side of serving in plain PyTorch (no Ray): load a checkpoint, run batched maps.

Images cross this boundary as uint8 [N, R, R, 3] numpy arrays and latent codes as float32 numpy
arrays, so a Serve replica ships nothing but numpy. Noise inputs are off: one latent code always
maps to one image, and a seed always gives the same face.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from alae_ray.core.checkpoint import CheckpointError, load_model
from alae_ray.core.config import Config

from .styles import describe_bands

MAX_FORWARD = 64  # images per forward pass; bounds activation memory at large resolutions


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else the CPU. Asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


@contextmanager
def local_checkpoint(uri: str) -> Iterator[str]:
    """A local directory holding the checkpoint at ``uri``; an ``s3://`` one is downloaded first."""
    if not str(uri).startswith("s3://"):
        yield str(uri)
        return
    import pyarrow.fs as pafs

    from alae_ray.data.storage import DatasetError, resolve

    tmp = tempfile.mkdtemp(prefix="alae-serve-ckpt-")
    try:
        try:
            loc = resolve(uri)
            pafs.copy_files(loc.path, tmp, source_filesystem=loc.fs, destination_filesystem=pafs.LocalFileSystem())
        except (OSError, DatasetError) as exc:
            raise CheckpointError(f"checkpoint {uri!r}: cannot download: {exc}".replace("\n", " ")) from None
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class Engine:
    """An ALAE at one level with batched, numpy-in/numpy-out maps."""

    def __init__(self, model, cfg: Config, progress: dict, device: torch.device, level: int | None = None,
                 name: str = "checkpoint"):
        m = cfg.model
        if m.kind != "style":
            raise CheckpointError(f"checkpoint {name!r}: serving needs a StyleALAE checkpoint, this one is {m.kind!r}")
        top = m.num_levels - 1
        self.level = top if level is None else int(level)
        if not 0 <= self.level <= top:
            raise CheckpointError(f"checkpoint {name!r}: level {self.level} is outside 0..{top}")
        self.model, self.cfg, self.progress, self.device, self.name = model, cfg, progress, device, name
        self.resolution = m.resolution(self.level)
        self.latent_size = m.latent_size
        self.style_layers = m.style_layers(self.level)
        self.num_levels = self.level + 1
        self.cutoff = min(cfg.train.truncation_cutoff, self.style_layers)

    def info(self) -> dict:
        """What clients need to know (JSON-ready, no server paths)."""
        return {"checkpoint": self.name, "preset": self.cfg.name, "resolution": self.resolution,
                "latent_size": self.latent_size, "style_layers": self.style_layers, "level": self.level,
                "num_levels": self.num_levels, "images_seen": self.progress.get("images_seen"),
                "truncation_psi": self.cfg.train.truncation_psi, "truncation_cutoff": self.cutoff,
                "device": self.device.type, "bands": describe_bands(self.num_levels)}

    # --- conversions ---------------------------------------------------------------------------

    def _to_input(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2)
        return x.float().div_(127.5).sub_(1.0)  # the training pipeline's mapping onto [-1, 1]

    @staticmethod
    def _to_images(x: torch.Tensor) -> np.ndarray:
        x = torch.nan_to_num(x.float(), nan=0.0).clamp_(-1, 1).add_(1).mul_(127.5).round_()
        return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    @staticmethod
    def _chunks(n: int) -> list[slice]:
        return [slice(i, min(i + MAX_FORWARD, n)) for i in range(0, n, MAX_FORWARD)]

    # --- batched maps --------------------------------------------------------------------------

    @torch.inference_mode()
    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, R, R, 3] -> w float32 [N, L]."""
        out = [self.model.encode(self._to_input(images[s]), self.level).float().cpu() for s in self._chunks(len(images))]
        return torch.cat(out).numpy()

    @torch.inference_mode()
    def synthesize(self, ws: np.ndarray) -> np.ndarray:
        """w float32 [N, L] or per-style-input codes [N, S, L] -> uint8 [N, R, R, 3]."""
        out = []
        for s in self._chunks(len(ws)):
            w = torch.from_numpy(np.ascontiguousarray(ws[s], dtype=np.float32)).to(self.device)
            out.append(self._to_images(self.model.decode(w, self.level, 1.0, noise=False)))
        return np.concatenate(out)

    @torch.inference_mode()
    def reconstruct(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [N, R, R, 3] -> (G(E(x)) uint8 [N, R, R, 3], w float32 [N, L])."""
        imgs, ws = [], []
        for s in self._chunks(len(images)):
            w = self.model.encode(self._to_input(images[s]), self.level)
            imgs.append(self._to_images(self.model.decode(w, self.level, 1.0, noise=False)))
            ws.append(w.float().cpu().numpy())
        return np.concatenate(imgs), np.concatenate(ws)

    def latents(self, seeds: np.ndarray) -> torch.Tensor:
        """z [N, L]: one CPU generator per seed, so a seed gives the same z on every device."""
        z = [torch.randn(self.latent_size, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        return torch.stack(z).to(self.device)

    @torch.inference_mode()
    def style_codes(self, seeds: np.ndarray, psis: np.ndarray) -> torch.Tensor:
        """Truncated per-input codes [N, S, L] for seeds, each with its own psi (first ``cutoff`` inputs)."""
        ws = self.model.broadcast(self.model.map(self.latents(seeds)), self.level)
        psi = torch.as_tensor(np.asarray(psis, dtype=np.float32), device=self.device).view(-1, 1, 1)
        pulled = self.model.w_avg + psi * (ws - self.model.w_avg)
        layer = torch.arange(ws.shape[1], device=ws.device).view(1, -1, 1)
        return torch.where(layer < self.cutoff, pulled, ws)

    @torch.inference_mode()
    def generate(self, seeds: np.ndarray, psis: np.ndarray) -> np.ndarray:
        """G(truncate(F(z(seed)), psi)) as uint8 [N, R, R, 3]."""
        out = []
        for s in self._chunks(len(seeds)):
            ws = self.style_codes(seeds[s], psis[s])
            out.append(self._to_images(self.model.decode(ws, self.level, 1.0, noise=False)))
        return np.concatenate(out)


def open_engine(uri: str, *, device: str = "auto", level: int | None = None) -> Engine:
    """An Engine from a local or ``s3://`` checkpoint; CheckpointError names the checkpoint."""
    dev = pick_device(device)
    name = str(uri) if str(uri).startswith("s3://") else os.path.basename(os.path.normpath(str(uri)))
    with local_checkpoint(uri) as path:
        if not os.path.isdir(path):
            raise CheckpointError(f"checkpoint {name!r} not found")
        try:
            model, cfg, progress = load_model(path, ema=True, device=dev)
        except CheckpointError as exc:
            # The core names the local (possibly temporary) directory; name the URI the user gave.
            raise CheckpointError(str(exc).replace(repr(str(path)), repr(str(uri)))) from None
    return Engine(model, cfg, progress, dev, level, name=name)


def mix_codes(w_src: np.ndarray, w_dst: np.ndarray, layers: range, style_layers: int) -> np.ndarray:
    """[D, S, style_layers, L]: destination d's w everywhere except ``layers``, taken from source s."""
    d, s = len(w_dst), len(w_src)
    ws = np.broadcast_to(w_dst[:, None, None, :], (d, s, style_layers, w_dst.shape[1])).copy()
    ws[:, :, layers.start:layers.stop] = w_src[None, :, None, :]
    return ws


def lerp_codes(w_a: np.ndarray, w_b: np.ndarray, steps: int) -> np.ndarray:
    """[steps, L]: from w_a to w_b inclusive, evenly spaced (the paper interpolates in W linearly)."""
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    return ((1 - t) * w_a[None] + t * w_b[None]).astype(np.float32)

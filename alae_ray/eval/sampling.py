"""An ALAE checkpoint seen as an image model: latents, generations and reconstructions as image batches.

Everything here is deterministic given (seed, first sample index): sample i's latent comes from a
generator seeded by the chunk it belongs to, so a single process and N Ray workers that cut the
same chunks draw exactly the same latents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.config import Config
from ..core.model import ALAE


def match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey -> RGB by repetition, RGB -> grey by ITU-R 601 luma; unchanged when they already match."""
    if images.shape[1] == channels:
        return images
    if images.shape[1] == 1:
        return images.expand(-1, channels, -1, -1)
    if images.shape[1] == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
        return (images * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)
    raise ValueError(f"images have {images.shape[1]} channels, the model {channels}")


@dataclass
class ImageModel:
    model: ALAE
    cfg: Config
    level: int
    device: torch.device

    @property
    def latent_size(self) -> int:
        return self.cfg.model.latent_size

    @property
    def channels(self) -> int:
        return self.cfg.model.channels

    @property
    def resolution(self) -> int:
        m = self.cfg.model
        return int(math.isqrt(m.mlp_input // m.channels)) if m.kind == "mlp" else m.resolution(self.level)

    def to_images(self, out: torch.Tensor) -> torch.Tensor:
        """G's output as images [N, C, R, R] in [-1, 1] (the MLP's flat vectors are reshaped)."""
        return out.view(len(out), self.channels, self.resolution, self.resolution) if out.dim() == 2 else out

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """Images [N, C, R, R] as E's input (flattened for the MLP); RGB <-> grey to E's channels."""
        images = match_channels(images.to(self.device), self.channels)
        return images.flatten(1) if self.cfg.model.kind == "mlp" else images

    # Styles are broadcast to every layer (authors' design); noise is off so that a latent maps to one image.
    @torch.no_grad()
    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.F(z.to(self.device))

    @torch.no_grad()
    def synthesize(self, w: torch.Tensor) -> torch.Tensor:
        return self.to_images(self.model.decode(w.to(self.device), self.level, 1.0, noise=False))

    @torch.no_grad()
    def generate(self, z: torch.Tensor, psi: float = 1.0) -> torch.Tensor:
        cutoff = self.cfg.train.truncation_cutoff if self.cfg.model.kind == "style" else None
        out = self.model.generate(z.to(self.device), self.level, 1.0, psi=psi, cutoff=cutoff, noise=False)
        return self.to_images(out)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.to_images(self.model.reconstruct(self.to_input(images), self.level, 1.0, noise=False))


def open_image_model(checkpoint: str, *, level: int | None = None, ema: bool = True,
                     device: str | torch.device = "cpu") -> ImageModel:
    """Load a checkpoint directory (``file://`` prefix allowed) for evaluation.

    ``level`` defaults to the level the run reached (``progress.json``), else the top level.
    """
    from ..core.checkpoint import load_model

    path = checkpoint[len("file://"):] if checkpoint.startswith("file://") else checkpoint
    model, cfg, progress = load_model(path, ema=ema, device=device)
    top = cfg.model.num_levels - 1
    if level is None:
        level = progress.get("level") if progress.get("level") is not None else top
    if not 0 <= level <= top:
        raise ValueError(f"level {level} is outside the model's levels 0..{top}")
    return ImageModel(model, cfg, int(level), torch.device(device))


def chunk_latents(seed: int, start: int, count: int, latent_size: int) -> torch.Tensor:
    """z [count, L] for samples start..start+count-1 (float32, CPU), independent of who draws them."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + start) % (2**63))
    return torch.randn(count, latent_size, generator=gen)


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """(start, count) pairs cutting 0..n-1 into pieces of ``size`` (the last may be shorter)."""
    return [(s, min(size, n - s)) for s in range(0, n, size)]

"""An ALAE checkpoint seen as an image model: latents, generations and reconstructions as image batches.

Everything here is deterministic given (seed, first sample index): sample i's latent comes from a
generator seeded by the chunk it belongs to, so a single process and N Ray workers that cut the
same chunks draw exactly the same latents.
"""

from __future__ import annotations

import torch

from ..api import Model


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


class ImageModel:
    """A checkpoint as an image model for the metrics: images are float [N, C, R, R] in [-1, 1]."""

    def __init__(self, api: Model):
        self.api = api
        self.model, self.cfg, self.level, self.device = api.network, api.cfg, api.level, api.device
        self.latent_size, self.channels, self.resolution = api.latent_size, api.channels, api.resolution

    # G's noise is on, as in the authors' metrics; fixed, so that every run of a metric agrees.
    @torch.no_grad()
    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.F(z.to(self.device))

    @torch.no_grad()
    def synthesize(self, w: torch.Tensor) -> torch.Tensor:
        """G(w); one set of noise images for every w (PPL compares two images under the same noise)."""
        return self.api.decode(w)

    @torch.no_grad()
    def generate(self, z: torch.Tensor, psi: float = 1.0, noise_seed: int = 0) -> torch.Tensor:
        """G(truncate(F(z))) with one noise image per z, drawn from ``noise_seed``."""
        return self.api.generate(z=z, psi=psi, noise_seed=noise_seed)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.api.reconstruct(match_channels(images.to(self.device), self.channels))


def open_image_model(checkpoint: str, *, level: int | None = None, ema: bool = True,
                     device: str | torch.device = "cpu") -> ImageModel:
    """Load a checkpoint or run directory (``file://`` prefix allowed) for evaluation.

    ``level`` defaults to the level the run reached (``progress.json``), else the top level.
    """
    from ..api import load

    path = checkpoint[len("file://"):] if checkpoint.startswith("file://") else checkpoint
    api = load(path, ema=ema, device=device)
    if level is None and api.progress.get("level") is not None:
        level = int(api.progress["level"])
    if level is not None and level != api.level:
        api = Model(api.network, api.cfg, api.progress, level=level, name=api.name)
    return ImageModel(api)


def chunk_latents(seed: int, start: int, count: int, latent_size: int) -> torch.Tensor:
    """z [count, L] for samples start..start+count-1 (float32, CPU), independent of who draws them."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + start) % (2**63))
    return torch.randn(count, latent_size, generator=gen)


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """(start, count) pairs cutting 0..n-1 into pieces of ``size`` (the last may be shorter)."""
    return [(s, min(size, n - s)) for s in range(0, n, size)]

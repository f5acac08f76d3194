"""The ALAE model: F, G, E, D plus the running average of w, and what users do with them.

``generate`` is G(F(z)) with optional truncation; ``encode`` is E(x); ``reconstruct`` is G(E(x));
``mix_styles`` takes some style inputs from one w and the rest from another (the paper's Figure 9).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .config import ModelConfig
from .networks import DiscriminatorD, Encoder, Generator, MappingF, MLPEncoder, MLPGenerator


class ALAE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        L = cfg.latent_size
        self.F = MappingF(L, cfg.mapping_layers, cfg.mapping_lrmul)
        if cfg.kind == "mlp":
            self.D = DiscriminatorD(L, cfg.d_layers, cfg.d_lrmul, out_features=1, score_index=0)
            self.G = MLPGenerator(L, cfg.mlp_hidden, cfg.mlp_input)
            self.E = MLPEncoder(cfg.mlp_input, cfg.mlp_hidden, L)
        else:
            self.D = DiscriminatorD(L, cfg.d_layers, cfg.d_lrmul, out_features=2 * L, score_index=L)
            maps = [cfg.feature_maps(level) for level in range(cfg.num_levels)]
            self.G = Generator(L, cfg.channels, maps)
            self.E = Encoder(L, cfg.channels, maps, bottom_channels=cfg.feature_maps(-1))
        # Running mean of F(z) per style input, the centre of truncation. Rows differ only in imported
        # models: F's output is the same for every style input, so training moves all rows alike.
        self.register_buffer("w_avg", torch.zeros(cfg.style_layers(cfg.num_levels - 1), L))

    # --- styles --------------------------------------------------------------------------------

    def style_layers(self, level: int) -> int:
        return self.cfg.style_layers(level)

    def broadcast(self, w: torch.Tensor, level: int) -> torch.Tensor:
        """[N, L] -> [N, S, L]: the same w for each of G's style inputs (the authors' design)."""
        return w.unsqueeze(1).expand(-1, self.style_layers(level), -1)

    @staticmethod
    def mix(ws: torch.Tensor, w2: torch.Tensor, crossover: int) -> torch.Tensor:
        """Style inputs ``< crossover`` from ws, the rest from w2 ([N, L] or [N, S, L])."""
        w2 = w2.unsqueeze(1).expand_as(ws) if w2.dim() == 2 else w2
        layer = torch.arange(ws.shape[1], device=ws.device).view(1, -1, 1)
        return torch.where(layer < crossover, ws, w2)

    def truncate(self, ws: torch.Tensor, psi: float | torch.Tensor, cutoff: int | None) -> torch.Tensor:
        """Pull the first ``cutoff`` style inputs (all if None) of ws [N, S, L] towards the average w.

        psi: one value, or one per sample [N]; 1 leaves ws as it is.
        """
        if not torch.is_tensor(psi) and psi == 1.0:
            return ws
        S = ws.shape[1]
        coef = torch.as_tensor(psi, dtype=ws.dtype, device=ws.device).reshape(-1, 1, 1).expand(-1, S, 1).clone()
        if cutoff is not None:
            coef[:, cutoff:] = 1.0
        return torch.lerp(self.w_avg[:S].to(ws.dtype), ws, coef)  # avg + coef * (ws - avg), per row

    @torch.no_grad()
    def update_w_avg(self, w: torch.Tensor, beta: float) -> None:
        """Move the running average towards the batch mean of w [N, L] (every row alike)."""
        self.w_avg.lerp_(w.to(self.w_avg.dtype).mean(0).expand_as(self.w_avg), 1.0 - beta)

    # --- the four maps -------------------------------------------------------------------------

    def map(self, z: torch.Tensor) -> torch.Tensor:
        return self.F(z)

    def decode(self, w: torch.Tensor, level: int, alpha: float = 1.0, noise=True,
               noise_images: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """G(w) for w of shape [N, L] (broadcast) or [N, S, L] (per-style-input codes)."""
        ws = self.broadcast(w, level) if w.dim() == 2 else w
        if self.cfg.kind == "mlp":
            return self.G(ws)
        return self.G(ws, level, alpha, noise, noise_images)

    def encode(self, x: torch.Tensor, level: int, alpha: float = 1.0) -> torch.Tensor:
        return self.E(x, level, alpha)

    def discriminate(self, w: torch.Tensor) -> torch.Tensor:
        return self.D(w)

    def noise_images(self, level: int, n: int = 1, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Noise inputs for G up to ``level`` (two per block, [n, 1, H, W]), drawn on the CPU so that
        a seeded generator gives the same images on every device."""
        return [torch.randn(n, 1, 4 * 2**i, 4 * 2**i, generator=generator).to(self.w_avg.device)
                for i in range(level + 1) for _ in range(2)]

    def generate(self, z: torch.Tensor, level: int, alpha: float = 1.0, *, psi: float = 1.0,
                 cutoff: int | None = None, noise=True, noise_images=None) -> torch.Tensor:
        ws = self.truncate(self.broadcast(self.F(z), level), psi, cutoff)
        return self.decode(ws, level, alpha, noise, noise_images)

    def reconstruct(self, x: torch.Tensor, level: int, alpha: float = 1.0, noise=True,
                    noise_images=None) -> torch.Tensor:
        return self.decode(self.E(x, level, alpha), level, alpha, noise, noise_images)


def mix_styles(ws: torch.Tensor, w: torch.Tensor, layers: range) -> torch.Tensor:
    """Per-style-input codes ws [..., S, L] with the inputs in ``layers`` taken from w [..., L] (the
    paper's Figure 9); a new tensor. Leading dimensions broadcast, so ws [D, 1, S, L] and w [1, K, L]
    give the [D, K, S, L] grid of every destination with every source's styles."""
    take = torch.zeros(ws.shape[-2], 1, dtype=torch.bool, device=ws.device)
    take[layers.start:layers.stop] = True
    return torch.where(take, w.unsqueeze(-2), ws)

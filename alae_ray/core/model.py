"""The ALAE model: F, G, E, D plus the running average of w, and what users do with them.

``generate`` is G(F(z)) with optional style mixing and truncation; ``encode`` is E(x);
``reconstruct`` is G(E(x)); ``mix_styles`` takes coarse styles from one w and the rest from another
(the paper's Figure 9).
"""

from __future__ import annotations

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
        self.D = DiscriminatorD(L, cfg.d_layers, cfg.d_lrmul)
        if cfg.kind == "mlp":
            self.G = MLPGenerator(L, cfg.mlp_hidden, cfg.mlp_input)
            self.E = MLPEncoder(cfg.mlp_input, cfg.mlp_hidden, L)
        else:
            maps = [cfg.feature_maps(level) for level in range(cfg.num_levels)]
            self.G = Generator(L, cfg.channels, maps)
            self.E = Encoder(L, cfg.channels, maps)
        self.register_buffer("w_avg", torch.zeros(L))  # running mean of F(z), centre of truncation

    # --- styles --------------------------------------------------------------------------------

    def style_layers(self, level: int) -> int:
        return self.cfg.style_layers(level)

    def broadcast(self, w: torch.Tensor, level: int) -> torch.Tensor:
        """[N, L] -> [N, S, L]: the same w for each of G's style inputs (authors' design)."""
        return w.unsqueeze(1).expand(-1, self.style_layers(level), -1)

    @staticmethod
    def mix(ws: torch.Tensor, w2: torch.Tensor, crossover: int) -> torch.Tensor:
        """Style inputs ``< crossover`` from ws, the rest from w2 ([N, L] or [N, S, L])."""
        w2 = w2.unsqueeze(1).expand_as(ws) if w2.dim() == 2 else w2
        layer = torch.arange(ws.shape[1], device=ws.device).view(1, -1, 1)
        return torch.where(layer < crossover, ws, w2)

    def truncate(self, ws: torch.Tensor, psi: float, cutoff: int | None) -> torch.Tensor:
        """Pull the first ``cutoff`` style inputs towards the average w by psi (psi = 1: identity)."""
        if psi == 1.0:
            return ws
        layer = torch.arange(ws.shape[1], device=ws.device).view(1, -1, 1)
        pulled = torch.lerp(self.w_avg.to(ws.dtype), ws, psi)
        return pulled if cutoff is None else torch.where(layer < cutoff, pulled, ws)

    # --- the four maps -------------------------------------------------------------------------

    def map(self, z: torch.Tensor) -> torch.Tensor:
        return self.F(z)

    def decode(self, w: torch.Tensor, level: int, alpha: float = 1.0, noise: bool = True) -> torch.Tensor:
        """G(w) for w of shape [N, L] (broadcast) or [N, S, L] (per-layer styles)."""
        ws = self.broadcast(w, level) if w.dim() == 2 else w
        return self.G(ws, level, alpha, noise)

    def encode(self, x: torch.Tensor, level: int, alpha: float = 1.0) -> torch.Tensor:
        return self.E(x, level, alpha)

    def discriminate(self, w: torch.Tensor) -> torch.Tensor:
        return self.D(w)

    def generate(self, z: torch.Tensor, level: int, alpha: float = 1.0, *, psi: float = 1.0,
                 cutoff: int | None = None, noise: bool = True) -> torch.Tensor:
        ws = self.truncate(self.broadcast(self.F(z), level), psi, cutoff)
        return self.G(ws, level, alpha, noise)

    def reconstruct(self, x: torch.Tensor, level: int, alpha: float = 1.0, noise: bool = False) -> torch.Tensor:
        return self.decode(self.E(x, level, alpha), level, alpha, noise)

    def mix_styles(self, w_src: torch.Tensor, w_dst: torch.Tensor, level: int, layers: range,
                   noise: bool = False) -> torch.Tensor:
        """Generate from w_dst with the style inputs in ``layers`` taken from w_src (Figure 9)."""
        ws = self.broadcast(w_dst, level).clone()
        ws[:, layers.start:layers.stop] = w_src.unsqueeze(1)
        return self.G(ws, level, 1.0, noise)

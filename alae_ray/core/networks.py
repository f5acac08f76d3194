"""The four ALAE networks: F (z -> w), G (w -> x), E (x -> w), D (w -> score).

Two families share F and D: the MLP ALAE of §7.1 (permutation-invariant MNIST) and StyleALAE (§5),
whose G is a StyleGAN synthesis network and whose E mirrors it, reading per-channel instance
statistics after every layer and mapping them linearly into w (Eq. 9). Every G and E takes
``(input, level, alpha)``; the MLP family has a single level and ignores both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F_
from torch import nn

from .layers import (AdaIN, Blur, EqualConv2d, EqualLinear, NoiseInput, downsample2x, lrelu, mean_std,
                     pixel_norm, upsample2x)


class MappingF(nn.Module):
    """F: z -> w, an MLP of ``num_layers`` layers of width ``latent_size`` on pixel-normalised z."""

    def __init__(self, latent_size: int, num_layers: int, lrmul: float):
        super().__init__()
        self.layers = nn.ModuleList(EqualLinear(latent_size, latent_size, lrmul=lrmul) for _ in range(num_layers))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = pixel_norm(z)  # [N, L]
        for layer in self.layers:
            x = lrelu(layer(x))
        return x


class DiscriminatorD(nn.Module):
    """D: w -> real/fake logit, an MLP of ``num_layers`` layers; the last has one output."""

    def __init__(self, latent_size: int, num_layers: int, lrmul: float):
        super().__init__()
        self.hidden = nn.ModuleList(EqualLinear(latent_size, latent_size, lrmul=lrmul) for _ in range(num_layers - 1))
        self.out = EqualLinear(latent_size, 1, gain=1.0, lrmul=lrmul)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            w = lrelu(layer(w))
        return self.out(w).squeeze(1)  # [N]


# --- MLP ALAE (§7.1) -------------------------------------------------------------------------


class MLPGenerator(nn.Module):
    """G: w -> x (flattened), two hidden layers."""

    def __init__(self, latent_size: int, hidden: int, out_features: int):
        super().__init__()
        self.fc1 = EqualLinear(latent_size, hidden)
        self.fc2 = EqualLinear(hidden, hidden)
        self.fc3 = EqualLinear(hidden, out_features, gain=1.0)

    def forward(self, ws: torch.Tensor, level: int = 0, alpha: float = 1.0, noise: bool = False) -> torch.Tensor:
        w = ws[:, 0] if ws.dim() == 3 else ws  # one style input
        return self.fc3(lrelu(self.fc2(lrelu(self.fc1(w)))))  # [N, 784]


class MLPEncoder(nn.Module):
    """E: x (flattened) -> w, two hidden layers; ``features`` is the 1024-D layer before the last."""

    def __init__(self, in_features: int, hidden: int, latent_size: int):
        super().__init__()
        self.fc1 = EqualLinear(in_features, hidden)
        self.fc2 = EqualLinear(hidden, hidden)
        self.fc3 = EqualLinear(hidden, latent_size, gain=1.0)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return lrelu(self.fc2(lrelu(self.fc1(x.flatten(1)))))

    def forward(self, x: torch.Tensor, level: int = 0, alpha: float = 1.0) -> torch.Tensor:
        return self.fc3(self.features(x))


# --- StyleALAE (§5) --------------------------------------------------------------------------


class SynthesisBlock(nn.Module):
    """One resolution of G: (upsample, conv, blur | learned 4x4 constant), noise, AdaIN, conv, noise, AdaIN."""

    def __init__(self, in_channels: int, out_channels: int, latent_size: int, first: bool):
        super().__init__()
        self.first = first
        if first:
            self.const = nn.Parameter(torch.ones(1, out_channels, 4, 4))
            self.bias0 = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        else:
            self.conv0 = EqualConv2d(in_channels, out_channels, 3)
            self.blur = Blur(out_channels)
        self.noise0 = NoiseInput(out_channels)
        self.adain0 = AdaIN(out_channels, latent_size)
        self.conv1 = EqualConv2d(out_channels, out_channels, 3)
        self.noise1 = NoiseInput(out_channels)
        self.adain1 = AdaIN(out_channels, latent_size)

    def forward(self, x: torch.Tensor | None, w0: torch.Tensor, w1: torch.Tensor, noise: bool) -> torch.Tensor:
        if self.first:
            x = self.const.expand(w0.shape[0], -1, -1, -1) + self.bias0
        else:
            x = self.blur(self.conv0(upsample2x(x)))  # [N, C, 2H, 2W]
        x = self.adain0(lrelu(self.noise0(x, noise)), w0)
        x = self.adain1(lrelu(self.noise1(self.conv1(x), noise)), w1)
        return x


class Generator(nn.Module):
    """G: StyleGAN synthesis network with one toRGB per level, grown progressively."""

    def __init__(self, latent_size: int, channels: int, feature_maps: list[int]):
        super().__init__()
        self.blocks = nn.ModuleList()
        self.to_rgb = nn.ModuleList()
        for level, c in enumerate(feature_maps):
            c_in = feature_maps[level - 1] if level else c
            self.blocks.append(SynthesisBlock(c_in, c, latent_size, first=level == 0))
            self.to_rgb.append(EqualConv2d(c, channels, 1, gain=1.0))

    def forward(self, ws: torch.Tensor, level: int, alpha: float = 1.0, noise: bool = True) -> torch.Tensor:
        # ws: [N, S, L] with S >= 2 * (level + 1) style inputs, two per resolution
        x = prev = None
        for lvl in range(level + 1):
            if lvl == level and alpha < 1.0:
                prev = self.to_rgb[lvl - 1](x)
            x = self.blocks[lvl](x, ws[:, 2 * lvl], ws[:, 2 * lvl + 1], noise)
        img = self.to_rgb[level](x)  # [N, channels, 4 * 2**level, same]
        if prev is not None:
            img = torch.lerp(upsample2x(prev), img, alpha)
        return img


class EncoderBlock(nn.Module):
    """One resolution of E, mirroring a SynthesisBlock.

    After each conv the per-channel mean and std (the statistics an AdaIN in G would set) are
    mapped into w by a learned linear map C_i (Eq. 9); the instance-normalised activations go on.
    The 4x4 block ends in a dense layer instead of the strided conv.
    """

    def __init__(self, in_channels: int, out_channels: int, latent_size: int, last: bool):
        super().__init__()
        self.last = last
        self.conv0 = EqualConv2d(in_channels, in_channels, 3)
        self.style0 = EqualLinear(2 * in_channels, latent_size, gain=1.0)
        if last:
            self.dense = EqualLinear(in_channels * 16, out_channels)
            self.style1 = EqualLinear(out_channels, latent_size, gain=1.0)
        else:
            self.blur = Blur(in_channels)
            self.conv1 = EqualConv2d(in_channels, out_channels, 3, down=True)
            self.style1 = EqualLinear(2 * out_channels, latent_size, gain=1.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = lrelu(self.conv0(x))
        w = self.style0(torch.cat(mean_std(x), dim=1))
        x = F_.instance_norm(x, eps=1e-8)
        if self.last:
            x = lrelu(self.dense(x.flatten(1)))  # [N, C]
            return x, w + self.style1(x)
        x = lrelu(self.conv1(self.blur(x)))  # [N, C', H/2, W/2]
        w = w + self.style1(torch.cat(mean_std(x), dim=1))
        return F_.instance_norm(x, eps=1e-8), w


class Encoder(nn.Module):
    """E: image -> w = sum of the style maps of every block from the input level down to 4x4."""

    def __init__(self, latent_size: int, channels: int, feature_maps: list[int]):
        super().__init__()
        self.from_rgb = nn.ModuleList(EqualConv2d(channels, c, 1) for c in feature_maps)
        self.blocks = nn.ModuleList(
            EncoderBlock(c, feature_maps[level - 1] if level else c, latent_size, last=level == 0)
            for level, c in enumerate(feature_maps))

    def forward(self, x: torch.Tensor, level: int, alpha: float = 1.0) -> torch.Tensor:
        h, w = self.blocks[level](lrelu(self.from_rgb[level](x)))
        if alpha < 1.0:
            # Fade-in: the new block's path blends with fromRGB of the 2x-downsampled image, and its
            # styles are weighted by alpha, so alpha = 0 is exactly the previous level's encoder.
            prev = lrelu(self.from_rgb[level - 1](downsample2x(x)))
            h, w = torch.lerp(prev, h, alpha), w * alpha
        for lvl in range(level - 1, -1, -1):
            h, w_l = self.blocks[lvl](h)
            w = w + w_l
        return w  # [N, L]

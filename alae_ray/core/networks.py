"""The four ALAE networks: F (z -> w), G (w -> x), E (x -> w), D (w -> score), as the authors built them.

Every forward computation equals the authors' code (podgorskiy/ALAE, commit 42bcf2e; checked against
their own outputs in tests/integration/test_authors_reference.py). Two families share F and D: StyleALAE (§5;
their ``GeneratorDefault`` / ``EncoderDefault``) and the MLP ALAE of §7.1 (their MNIST branch).
Blocks are indexed by level (0 = 4x4); the authors index E's blocks from the top resolution down,
which only ``authors.py`` needs to know. Every G and E takes ``(input, level, alpha)``; the MLP family
has one level and ignores both.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F_
from torch import nn

from .layers import Blur, DownConv2d, EqualConv2d, EqualLinear, UpConv2d, lrelu, mean_std, pixel_norm, style_mod

# Resampling convs take their fused form (same map, fewer multiplications) from this resolution of
# E's input / G's output up: faster there on the CPU, slower at 8x8 (benchmarks/bench_fused.py). The
# authors fuse from 128x128.
FUSED_MIN_RESOLUTION = 16

G_INSTANCE_NORM_EPS = 1e-8
E_INSTANCE_NORM_EPS = 1e-5  # torch's default, which the authors' encoder keeps


def fading(alpha: float | torch.Tensor) -> bool:
    """Whether the newest level is still blending in. ``alpha`` may be a 0-d tensor (compiled training
    passes one, so that one graph serves every alpha of a fade-in); a tensor always means fading."""
    return torch.is_tensor(alpha) or alpha < 1.0


def _blend(old: torch.Tensor, new: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """lerp(old, new, alpha) in the wider of their dtypes: under bf16 autocast one path comes out of a
    convolution (bf16) and the other may not (float32), and lerp takes one dtype."""
    dtype = torch.promote_types(old.dtype, new.dtype)
    return torch.lerp(old.to(dtype), new.to(dtype), alpha.to(dtype) if torch.is_tensor(alpha) else alpha)


class MappingF(nn.Module):
    """F: z -> w: pixel norm, then ``num_layers`` x (linear, leaky ReLU), the last one included."""

    def __init__(self, latent_size: int, num_layers: int, lrmul: float):
        super().__init__()
        self.map_blocks = nn.ModuleList(EqualLinear(latent_size, latent_size, lrmul=lrmul) for _ in range(num_layers))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = pixel_norm(z)  # [N, L]
        for layer in self.map_blocks:
            x = lrelu(layer(x))
        return x


class DiscriminatorD(nn.Module):
    """D: w -> real/fake logit: ``num_layers`` linear layers with no activation between them.

    The authors' last layer is ``out_features`` wide and the score is its element ``score_index``
    (2L wide, element L, for StyleALAE); the other outputs never receive a gradient.
    """

    def __init__(self, latent_size: int, num_layers: int, lrmul: float, out_features: int, score_index: int):
        super().__init__()
        widths = [latent_size] * num_layers + [out_features]
        self.map_blocks = nn.ModuleList(EqualLinear(a, b, lrmul=lrmul) for a, b in zip(widths, widths[1:]))
        self.score_index = score_index

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        for layer in self.map_blocks:
            w = layer(w)
        return w[:, self.score_index]  # [N]


# --- MLP ALAE (§7.1, the authors' MNIST branch) -----------------------------------------------


class MLPGenerator(nn.Module):
    """G: w -> x (flattened): two hidden layers with leaky ReLU 0.01, linear output."""

    def __init__(self, latent_size: int, hidden: int, out_features: int):
        super().__init__()
        self.fc1 = EqualLinear(latent_size, hidden)
        self.fc2 = EqualLinear(hidden, hidden)
        self.fc3 = EqualLinear(hidden, out_features)

    def forward(self, ws: torch.Tensor, level: int = 0, alpha: float = 1.0, noise=False,
                noise_images=None) -> torch.Tensor:  # no noise inputs: G's signature, for the phases
        w = ws[:, 0] if ws.dim() == 3 else ws  # one style input
        return self.fc3(lrelu(self.fc2(lrelu(self.fc1(w), 0.01)), 0.01))  # [N, 784]


class MLPEncoder(nn.Module):
    """E: x (flattened) -> w: two hidden layers with leaky ReLU 0.2, leaky ReLU 0.01 on w itself.

    ``features`` is the 1024-D second hidden layer after its activation (the paper's "long" features).
    """

    def __init__(self, in_features: int, hidden: int, latent_size: int):
        super().__init__()
        self.fc1 = EqualLinear(in_features, hidden)
        self.fc2 = EqualLinear(hidden, hidden)
        self.fc3 = EqualLinear(hidden, latent_size)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return lrelu(self.fc2(lrelu(self.fc1(x.flatten(1)))))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """w from the features: the last layer and its leaky ReLU 0.01."""
        return lrelu(self.fc3(features), 0.01)

    def forward(self, x: torch.Tensor, level: int = 0, alpha: float = 1.0) -> torch.Tensor:
        return self.head(self.features(x))


# --- StyleALAE (§5) --------------------------------------------------------------------------


def _noise_free_term(x: torch.Tensor, block: int) -> torch.Tensor:
    """What the authors' G adds *instead of* noise when noise is off: a fixed function of x.

    0.8 * s * exp(-x^2 / (2 s^2)) / sqrt(2 pi) with s = sqrt(block + 1), not zero.
    """
    s = math.sqrt(block + 1)
    return s * torch.exp(-x * x / (2.0 * s * s)) / math.sqrt(2.0 * math.pi) * 0.8  # their order of operations


class SynthesisBlock(nn.Module):
    """One resolution of G.

    (upsample + 3x3 conv + blur | nothing at 4x4), noise, bias, leaky ReLU, instance norm, style 1;
    3x3 conv, noise, bias, leaky ReLU, instance norm, style 2.
    """

    def __init__(self, in_channels: int, out_channels: int, latent_size: int, index: int, fused: bool):
        super().__init__()
        self.index = index
        if index > 0:
            self.conv_1 = UpConv2d(in_channels, out_channels, fused=fused)
            self.blur = Blur(out_channels)
        self.noise_weight_1 = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.bias_1 = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.style_1 = EqualLinear(latent_size, 2 * out_channels, gain=1.0)
        self.conv_2 = EqualConv2d(out_channels, out_channels, 3, bias=False)
        self.noise_weight_2 = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.bias_2 = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.style_2 = EqualLinear(latent_size, 2 * out_channels, gain=1.0)

    def _noise(self, x: torch.Tensor, weight: torch.Tensor, noise, image: torch.Tensor | None) -> torch.Tensor:
        if image is not None:
            return torch.addcmul(x, weight, image.to(x.dtype))
        if noise:
            # One noise image per sample; at 4x4 the input is still the batch-1 constant, so the first
            # injection draws one image for the whole batch, as the authors' G does.
            image = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype)
            return torch.addcmul(x, weight, image)
        return x + _noise_free_term(x, self.index)

    def forward(self, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, noise=True,
                noise_images: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        n1, n2 = noise_images if noise_images is not None else (None, None)
        if self.index > 0:
            x = self.blur(self.conv_1(x))  # [N, C, 2H, 2W]
        x = self._noise(x, self.noise_weight_1, noise, n1) + self.bias_1
        x = F_.instance_norm(lrelu(x), eps=G_INSTANCE_NORM_EPS)
        x = style_mod(x, self.style_1(w1))
        x = self._noise(self.conv_2(x), self.noise_weight_2, noise, n2) + self.bias_2
        x = F_.instance_norm(lrelu(x), eps=G_INSTANCE_NORM_EPS)
        return style_mod(x, self.style_2(w2))


class Generator(nn.Module):
    """G: StyleGAN synthesis network from a learned 4x4 constant, one toRGB per level, grown progressively."""

    def __init__(self, latent_size: int, channels: int, feature_maps: list[int]):
        super().__init__()
        self.const = nn.Parameter(torch.ones(1, feature_maps[0], 4, 4))
        self.blocks = nn.ModuleList(
            SynthesisBlock(feature_maps[max(level - 1, 0)], c, latent_size, level,
                           fused=4 * 2**level >= FUSED_MIN_RESOLUTION)
            for level, c in enumerate(feature_maps))
        # toRGB's gain 0.03 only sets its init scale and step size (no extra factor in the forward pass).
        self.to_rgb = nn.ModuleList(EqualConv2d(c, channels, 1, gain=0.03) for c in feature_maps)

    def forward(self, ws: torch.Tensor, level: int, alpha: float = 1.0, noise=True,
                noise_images: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """ws: [N, S, L] with S >= 2 * (level + 1) style inputs, two per resolution.

        noise: True draws fresh noise; False uses the authors' deterministic stand-in. ``noise_images``
        (two per block, [N or 1, 1, H, W]) injects given noise instead.
        """
        x, prev = self.const, None  # [1, C, 4, 4]: broadcasts to the batch at the first style
        for lvl in range(level + 1):
            if lvl == level and fading(alpha):
                prev = self.to_rgb[lvl - 1](x)
            images = noise_images[2 * lvl:2 * lvl + 2] if noise_images is not None else None
            x = self.blocks[lvl](x, ws[:, 2 * lvl], ws[:, 2 * lvl + 1], noise, images)
        img = self.to_rgb[level](x)  # [N, channels, 4 * 2**level, same]
        if prev is not None:
            img = _blend(F_.interpolate(prev, size=img.shape[-1]), img, alpha)
        return img


class EncoderBlock(nn.Module):
    """One resolution of E (the authors' default encoder block, also at 4x4).

    3x3 conv, bias, leaky ReLU -> [mean, std] (style 1) -> instance norm -> blur -> 3x3 conv and 2x2
    average -> bias, leaky ReLU -> [mean, std] (style 2) -> instance norm. Each style map C_i turns
    the statistics into a contribution to w (Eq. 9).
    """

    def __init__(self, in_channels: int, out_channels: int, latent_size: int, fused: bool):
        super().__init__()
        self.conv_1 = EqualConv2d(in_channels, in_channels, 3, bias=False)
        self.bias_1 = nn.Parameter(torch.zeros(1, in_channels, 1, 1))
        self.blur = Blur(in_channels)
        self.conv_2 = DownConv2d(in_channels, out_channels, fused=fused)
        self.bias_2 = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.style_1 = EqualLinear(2 * in_channels, latent_size)
        self.style_2 = EqualLinear(2 * out_channels, latent_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (features for the next block [N, C', H/2, W/2], style 1's w [N, L], style 2's w [N, L])."""
        x = lrelu(self.conv_1(x) + self.bias_1)
        s1 = mean_std(x)
        x = F_.instance_norm(x, eps=E_INSTANCE_NORM_EPS)
        x = lrelu(self.conv_2(self.blur(x)) + self.bias_2)
        s2 = mean_std(x)
        x = F_.instance_norm(x, eps=E_INSTANCE_NORM_EPS)
        return x, self.style_1(s1), self.style_2(s2)


class Encoder(nn.Module):
    """E: image -> w = the sum of every used block's style contributions, from the input level down to 4x4."""

    def __init__(self, latent_size: int, channels: int, feature_maps: list[int], bottom_channels: int):
        super().__init__()
        outs = [bottom_channels] + feature_maps[:-1]  # block l maps feature_maps[l] -> feature_maps[l - 1]
        self.from_rgb = nn.ModuleList(EqualConv2d(channels, c, 1) for c in feature_maps)
        self.blocks = nn.ModuleList(
            EncoderBlock(c, o, latent_size, fused=4 * 2**level >= FUSED_MIN_RESOLUTION)
            for level, (c, o) in enumerate(zip(feature_maps, outs)))

    def _from_rgb(self, x: torch.Tensor, level: int) -> torch.Tensor:
        # The authors' FromRGB ends in a leaky ReLU and their encoder applies another (slope 0.04 in all).
        return lrelu(lrelu(self.from_rgb[level](x)))

    def forward(self, x: torch.Tensor, level: int, alpha: float = 1.0) -> torch.Tensor:
        h, s1, s2 = self.blocks[level](self._from_rgb(x, level))
        if fading(alpha):
            # Fade-in: the new block's path blends with fromRGB of the 2x-downsampled image, and its
            # styles are weighted by alpha, so alpha = 0 is exactly the previous level's encoder.
            w = s1 * alpha + s2 * alpha
            h = _blend(self._from_rgb(F_.avg_pool2d(x, 2), level - 1), h, alpha)
        else:
            w = s1 + s2
        for lvl in range(level - 1, -1, -1):
            h, s1, s2 = self.blocks[lvl](h)
            w = w + (s1 + s2)
        return w  # [N, L]

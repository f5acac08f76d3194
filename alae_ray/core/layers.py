"""Building blocks: equalized-learning-rate layers, blur, noise and style modulation.

Equalized learning rate (Karras et al. 2018): weights are stored as N(0, 1/lrmul) and scaled at
run time by ``gain / sqrt(fan_in) * lrmul``. Adam normalises gradients per parameter, so storing
unit-scale weights makes every layer learn at the same speed, and a stock ``torch.optim.Adam``
gives the paper's behaviour without any custom optimizer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)


class EqualLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, *, gain: float = LRELU_GAIN,
                 lrmul: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lrmul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lrmul))
        self.scale = gain / math.sqrt(in_features) * lrmul
        self.lrmul = lrmul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lrmul)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]} -> {self.weight.shape[0]}, scale={self.scale:.4g}"


class EqualConv2d(nn.Module):
    """3x3 (or 1x1) convolution with run-time weight scaling; ``down=True`` strides by 2."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, gain: float = LRELU_GAIN,
                 bias: bool = True, down: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.stride = 2 if down else 1
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i} -> {o}, k={k}, stride={self.stride}"


class Blur(nn.Module):
    """[1 2 1] x [1 2 1] / 16 low-pass filter, applied after upsampling / before downsampling."""

    def __init__(self, channels: int):
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None, :]) / 16.0
        self.register_buffer("kernel", k.expand(channels, 1, 3, 3).contiguous(), persistent=False)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel.to(x.dtype), padding=1, groups=self.channels)


class NoiseInput(nn.Module):
    """Per-pixel noise scaled by a learned per-channel weight (StyleGAN's stochastic detail)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor, enabled: bool) -> torch.Tensor:
        if not enabled:
            return x
        noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype)
        return x + self.weight * noise


class AdaIN(nn.Module):
    """Instance-normalise, then scale and shift per channel by an affine map of w."""

    def __init__(self, channels: int, latent_size: int):
        super().__init__()
        self.style = EqualLinear(latent_size, 2 * channels, gain=1.0)
        self.channels = channels

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # x: [N, C, H, W], w: [N, latent]
        x = F.instance_norm(x, eps=1e-8)
        ys, yb = self.style(w).view(-1, 2, self.channels, 1, 1).unbind(1)
        return x * (1.0 + ys) + yb


def mean_std(x: torch.Tensor, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and std over H, W: [N, C, H, W] -> 2 x [N, C]."""
    var, mean = torch.var_mean(x, dim=(2, 3), unbiased=False)
    return mean, torch.sqrt(var + eps)


def pixel_norm(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + eps)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LRELU_SLOPE)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


def downsample2x(x: torch.Tensor) -> torch.Tensor:
    """Area (2x2 box) downsampling: the same operator the data pipeline uses between levels."""
    return F.avg_pool2d(x, 2)

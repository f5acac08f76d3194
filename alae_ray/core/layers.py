"""Building blocks: equalized-learning-rate layers, resampling convolutions, blur and the statistics E reads.

Equalized learning rate (Karras et al. 2018): weights are stored as N(0, 1/lrmul) and scaled at
run time by ``coef = gain / sqrt(fan_in) * lrmul`` (biases by ``lrmul``). Adam normalises gradients
per parameter, so unit-scale storage makes every layer learn at the same speed and a stock
``torch.optim.Adam`` gives the paper's behaviour. The authors store the *effective* weights instead
and scale the optimizer's step by the same ``coef``; ``coef`` is what converts one into the other.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)


class EqualLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, *, gain: float = LRELU_GAIN, lrmul: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lrmul)
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.coef = gain / math.sqrt(in_features) * lrmul  # stored -> effective weight
        self.lrmul = lrmul  # stored -> effective bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.coef, self.bias * self.lrmul)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]} -> {self.weight.shape[0]}, coef={self.coef:.4g}"


class EqualConv2d(nn.Module):
    """k x k convolution, stride 1, 'same' padding, run-time weight scaling."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, gain: float = LRELU_GAIN,
                 bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.coef = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.lrmul = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.coef, self.bias, padding=self.weight.shape[-1] // 2)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i} -> {o}, k={k}, coef={self.coef:.4g}"


def _shift_sum(k: torch.Tensor) -> torch.Tensor:
    """3x3 kernels -> 4x4: the sum of the kernel placed at the four 1-pixel shifts."""
    k = F.pad(k, [1, 1, 1, 1])
    return k[..., 1:, 1:] + k[..., :-1, 1:] + k[..., 1:, :-1] + k[..., :-1, :-1]


class DownConv2d(EqualConv2d):
    """3x3 conv then 2x2 average (E's downsampling), no bias.

    ``fused`` computes the same map as one stride-2 conv with the 4x4 kernel averaged over the four
    shifts of the 3x3 one (the authors' "fused scale"): 2.25x fewer multiplications, faster on the CPU
    from 16x16 inputs up (BENCHMARKS.md), slower below.
    """

    def __init__(self, in_channels: int, out_channels: int, *, fused: bool):
        super().__init__(in_channels, out_channels, 3, bias=False)
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.coef
        if self.fused:
            return F.conv2d(x, _shift_sum(w) * 0.25, stride=2, padding=1)
        return F.avg_pool2d(F.conv2d(x, w, padding=1), 2)


class UpConv2d(EqualConv2d):
    """2x nearest upsampling then 3x3 conv (G's upsampling), no bias.

    ``fused`` computes the same map as one stride-2 transposed conv whose 4x4 kernel sums the four
    shifts of the (flipped) 3x3 one. The weight is kept in conv layout [out, in, 3, 3] either way.
    """

    def __init__(self, in_channels: int, out_channels: int, *, fused: bool):
        super().__init__(in_channels, out_channels, 3, bias=False)
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.coef
        if self.fused:
            k = _shift_sum(w.flip([2, 3]).transpose(0, 1))  # [in, out, 4, 4]
            return F.conv_transpose2d(x, k, stride=2, padding=1)
        return F.conv2d(upsample2x(x), w, padding=1)


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


def style_mod(x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """AdaIN's second half: ``style`` [N, 2C] = (scale - 1, bias) per channel of x [N, C, H, W]."""
    s = style.view(style.shape[0], 2, x.shape[1], 1, 1)
    return torch.addcmul(s[:, 1], x, s[:, 0] + 1.0)


def mean_std(x: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-channel [mean, std] over H, W: [N, C, H, W] -> [N, 2C] (std without epsilon)."""
    var, mean = torch.var_mean(x, dim=(2, 3), unbiased=False)
    return torch.cat([mean, var.sqrt()], dim=1)


def pixel_norm(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + eps)


def lrelu(x: torch.Tensor, slope: float = LRELU_SLOPE) -> torch.Tensor:
    return F.leaky_relu(x, slope)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


def downsample2x(x: torch.Tensor) -> torch.Tensor:
    """Area (2x2 box) downsampling: the same operator the data pipeline uses between levels."""
    return F.avg_pool2d(x, 2)


def downsample_to(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Images [N, C, R, R] halved (``downsample2x``) until they are at most ``resolution`` wide."""
    while x.shape[-1] > resolution:
        x = downsample2x(x)
    return x

"""Between stored images (uint8, 0..255) and the networks' pixel range (model.pixel_min..pixel_max).

StyleALAE works in [-1, 1]; the authors' MNIST model in [0, 1]. Every path from data to the
networks and back goes through these two functions.
"""

from __future__ import annotations

import torch

from .config import ModelConfig


def from_uint8(x: torch.Tensor, m: ModelConfig) -> torch.Tensor:
    """uint8 (or float 0..255) images -> float32 in the model's range ([-1, 1]: x / 127.5 - 1)."""
    return x.float().div(255.0 / (m.pixel_max - m.pixel_min)).add_(m.pixel_min)


def to_uint8(x: torch.Tensor, m: ModelConfig) -> torch.Tensor:
    """The networks' images -> uint8, clipped; NaN becomes black."""
    x = torch.nan_to_num(x.float(), nan=m.pixel_min).clamp(m.pixel_min, m.pixel_max)
    return x.sub_(m.pixel_min).mul_(255.0 / (m.pixel_max - m.pixel_min)).round_().to(torch.uint8)

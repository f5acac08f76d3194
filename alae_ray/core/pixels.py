"""Between stored images (uint8, 0..255) and the networks' pixel range (model.pixel_min..pixel_max).

StyleALAE works in [-1, 1]; the authors' MNIST model in [0, 1]. Every path from data to the
networks and back goes through these functions; ``signed`` is the fixed [-1, 1] of the Python API,
the data readers and the metrics, whatever the model's range.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .config import ModelConfig


def from_uint8(x: torch.Tensor, m: ModelConfig) -> torch.Tensor:
    """uint8 (or float 0..255) images -> float32 in the model's range ([-1, 1]: x / 127.5 - 1)."""
    return x.float().div(255.0 / (m.pixel_max - m.pixel_min)).add_(m.pixel_min)


def signed(x: torch.Tensor) -> torch.Tensor:
    """uint8 (or float 0..255) images -> float32 in [-1, 1] (x / 127.5 - 1; a new tensor)."""
    return x.float().div(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor, m: ModelConfig) -> torch.Tensor:
    """The networks' images -> uint8, clipped; NaN becomes black."""
    x = torch.nan_to_num(x.float(), nan=m.pixel_min).clamp(m.pixel_min, m.pixel_max)
    return x.sub_(m.pixel_min).mul_(255.0 / (m.pixel_max - m.pixel_min)).round_().to(torch.uint8)


def ingest(images: np.ndarray, ids: np.ndarray, epoch: int, m: ModelConfig, device: torch.device,
           flip: bool) -> torch.Tensor:
    """A stored batch (uint8 [n, C, R, R] and row ids) as the networks' input on ``device``.

    uint8 crosses to the device (a quarter of float32's bytes; from pinned memory on a GPU, so the
    copy does not wait); the flips (``mirror``) and the scaling run there.
    """
    with warnings.catch_warnings():  # Ray Data's batches are read-only Arrow memory; x is never written
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        x = torch.from_numpy(np.ascontiguousarray(images))
    if device.type == "cuda":
        x = x.pin_memory()
    x = x.to(device, non_blocking=True)
    if flip:
        x = mirror(x, ids, epoch)
    x = from_uint8(x, m)
    return x.flatten(1) if m.kind == "mlp" else x


def mirror(x: torch.Tensor, ids, epoch: int) -> torch.Tensor:
    """Images [N, C, R, R] with about half of them mirrored left-right, chosen per (row id, epoch):
    the same rows whoever reads them and however they are batched, so a resumed run flips alike."""
    ids = torch.tensor(np.asarray(ids, dtype=np.int64)).to(x.device, non_blocking=True)  # a copy: ids may be read-only
    take = ((ids * 2654435761 + epoch * 40503) >> 11) & 1
    return torch.where(take.bool().view(-1, 1, 1, 1), x.flip(-1), x)

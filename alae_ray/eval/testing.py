"""Randomly initialised stand-ins for the pretrained weights, for tests and offline smoke runs.

``write_random_weights(torch_home)`` writes files of the right architectures under the names
torch.hub looks for (``<torch_home>/hub/checkpoints/<file>``), so that with ``TORCH_HOME`` set the
metrics go through their normal loading path. The numbers they produce are NOT comparable with
published figures; they only exercise the code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..metrics.networks import INCEPTION_FILE, LPIPS_CHANNELS, LPIPS_FILE, VGG16_FILE


def random_fid_inception(seed: int = 0) -> nn.Module:
    """pytorch-fid's FID Inception graph (as ``fid_inception_v3`` builds it), random weights, with
    batch-norm statistics calibrated on noise so that activations neither vanish nor explode."""
    from pytorch_fid import inception as pi

    torch.manual_seed(seed)
    net = pi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pi.FIDInceptionE_1(1280)
    net.Mixed_7c = pi.FIDInceptionE_2(2048)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0  # running stats := the statistics of the one calibration batch
    net.train()
    with torch.no_grad():
        net(torch.rand(4, 3, 299, 299) * 2 - 1)
    return net.eval()


def random_vgg16_features(seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision VGG16 state dict, ``features.*`` only (LPIPS reads nothing else)."""
    from ..metrics.networks import vgg16_features

    torch.manual_seed(seed)
    return {f"features.{k}": v for k, v in vgg16_features().state_dict().items()}


def random_lpips_linear(seed: int = 0) -> dict[str, torch.Tensor]:
    """LPIPS v0.1 linear layers in the ``lpips`` package's format, non-negative."""
    gen = torch.Generator().manual_seed(seed)
    return {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=gen) * 0.2 for i, c in enumerate(LPIPS_CHANNELS)}


def write_random_weights(torch_home: str | Path, seed: int = 0) -> Path:
    """Write all three weight files under ``torch_home/hub/checkpoints``; returns that folder.

    Only ever point this at a temporary folder: the files carry the real weights' names, so in a
    real torch.hub cache they would silently stand in for the pretrained networks.
    """
    folder = Path(torch_home) / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / INCEPTION_FILE).is_file():
        torch.save(random_fid_inception(seed).state_dict(), folder / INCEPTION_FILE)
    if not (folder / VGG16_FILE).is_file():
        torch.save(random_vgg16_features(seed), folder / VGG16_FILE)
    if not (folder / LPIPS_FILE).is_file():
        torch.save(random_lpips_linear(seed), folder / LPIPS_FILE)
    return folder

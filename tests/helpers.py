"""What several test modules share (test modules never import each other): the byte builders of
uploads, good and bad, and a private local Ray for the serving tests."""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# --- byte builders -----------------------------------------------------------------------------


def png_bytes(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def raw_png(arr: np.ndarray | None, bit_depth: int, color_type: int, size: tuple[int, int] | None = None) -> bytes:
    """A PNG written by hand: any bit depth / colour type Pillow cannot write, or a lying header.

    ``arr`` [H, W, C] (or None with ``size`` = (W, H) for a header with no pixel data).
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    if arr is None:
        w, h = size
        idat = zlib.compress(b"")
    else:
        h, w = arr.shape[:2]
        rows = arr.astype(">u2" if bit_depth == 16 else "u1").reshape(h, -1)
        idat = zlib.compress(b"".join(b"\x00" + r.tobytes() for r in rows))
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gradient(w: int = 48, h: int = 48) -> np.ndarray:
    """uint8 [H, W, 3] with distinct content everywhere (crops and resizes are visible)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1).astype(np.uint8)


def variants() -> dict[str, bytes]:
    """The colour/bit-depth cases that must be accepted and converted to 8-bit RGB."""
    rgb = gradient()
    rgba = np.concatenate([rgb, np.full((48, 48, 1), 128, np.uint8)], -1)
    return {
        "rgb_png": png_bytes(Image.fromarray(rgb)),
        "jpeg": png_bytes(Image.fromarray(rgb), "JPEG"),
        "cmyk_jpeg": png_bytes(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
        "gray8": png_bytes(Image.fromarray(rgb[..., 0])),
        "gray16": png_bytes(Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)),
        "rgb16": raw_png(rgb.astype(np.uint16) * 257, 16, 2),
        "rgba": png_bytes(Image.fromarray(rgba, "RGBA")),
        "rgba16": raw_png(rgba.astype(np.uint16) * 257, 16, 6),
        "gray_alpha": png_bytes(Image.fromarray(rgba[..., [0, 3]], "LA")),
        "palette": png_bytes(Image.fromarray(rgb).convert("P")),
        "webp": png_bytes(Image.fromarray(rgb), "WEBP"),
        "non_square": png_bytes(Image.fromarray(gradient(80, 40))),
    }


def bad_uploads() -> dict[str, tuple[bytes, int]]:
    """Uploads that must be refused: (bytes, expected status) under the default limits."""
    good_png = png_bytes(Image.fromarray(gradient(64, 64)))
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    good_jpeg = png_bytes(Image.fromarray(noise), "JPEG")  # mostly scan data: half of it cuts the scan
    return {
        "not_an_image": (b"this is not an image, just text\n" * 4, 415),
        "empty": (b"", 400),
        "truncated_png": (good_png[: len(good_png) // 2], 400),
        "truncated_jpeg": (good_jpeg[: len(good_jpeg) // 2], 400),
        "bomb_declared": (raw_png(None, 8, 2, size=(5000, 5000)), 413),  # under Pillow's own bomb limit
        "bomb_huge": (raw_png(None, 8, 2, size=(100_000, 100_000)), 413),  # Pillow refuses it at open
        "html": (b"<html><body>hi</body></html>", 415),
    }


# --- Ray ---------------------------------------------------------------------------------------


def start_private_ray(temp: str) -> None:
    """A private local Ray; one retry, because on a loaded machine the raylet can miss Ray's fixed 30 s."""
    import ray

    for attempt in range(2):
        try:
            ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
            return
        except Exception as exc:
            ray.shutdown()
            if attempt or "timed out during startup" not in str(exc):
                raise


class CrashOnce:
    """A worker callback factory (``train.run.build_trainer``'s ``worker_callbacks``): the last
    worker's process dies hard (``os._exit``, not an exception) at ``kimg``, once per run: a marker
    in the run's artifacts folder remembers. Ray's workers cannot import this module (tests/ is not
    on their path): the test modules that use it have it pickled by value (``by_value``)."""

    MARKER = "fault-injected.txt"

    def __init__(self, kimg: float):
        self.kimg = kimg

    def __call__(self, spec, rank: int, world: int):
        if rank != world - 1:
            return None
        marker = spec.artifacts_dir / self.MARKER

        def crash(tick, snapshot) -> None:
            if tick.kimg >= self.kimg and not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(f"killed at {tick.kimg}\n")
                os._exit(1)

        return crash


class HoldWhileShrunk:
    """A worker callback factory for elastic runs: in a group smaller than the run's most workers (it
    lost a node), rank 0 trains ``ticks`` ticks and then holds, up to ``max_s`` seconds, so that the
    run is still going when the node returns and Ray Train grows the group (replacing these workers).
    A test's timing device, like CrashOnce: without it a short run could end before the node is back."""

    def __init__(self, ticks: int, max_s: float):
        self.ticks, self.max_s = ticks, max_s

    def __call__(self, spec, rank: int, world: int):
        if rank != 0 or not spec.elastic or world >= spec.max_workers:
            return None
        seen = []

        def hold(tick, snapshot) -> None:
            seen.append(tick.kimg)
            if len(seen) == self.ticks:
                time.sleep(self.max_s)  # ended early by the resize, which stops this worker

        return hold


def by_value() -> None:
    """Have Ray pickle this module's objects by value (its workers cannot import it)."""
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])

# --- stand-in metric weights -------------------------------------------------------------------
# Randomly initialised weights of the real architectures under the names torch.hub looks for
# (``<torch_home>/hub/checkpoints/<file>``): with ``TORCH_HOME`` set, the metrics go through their
# normal loading path. The numbers they produce mean nothing beyond "the code runs". Test code, never
# shipped in the package (benchmarks/bench_eval.py uses them too).


def random_fid_inception(seed: int = 0):
    """pytorch-fid's FID Inception graph (as ``fid_inception_v3`` builds it), random weights, with
    batch-norm statistics calibrated on noise so that activations neither vanish nor explode."""
    import torch
    from pytorch_fid import inception as pi
    from torch import nn

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


def random_vgg16_features(seed: int = 0) -> dict:
    """A torchvision VGG16 state dict, ``features.*`` only (LPIPS reads nothing else)."""
    import torch

    from alae_ray.metrics.networks import vgg16_features

    torch.manual_seed(seed)
    return {f"features.{k}": v for k, v in vgg16_features().state_dict().items()}


def random_lpips_linear(seed: int = 0) -> dict:
    """LPIPS v0.1 linear layers in the ``lpips`` package's format, non-negative."""
    import torch

    from alae_ray.metrics.networks import LPIPS_CHANNELS

    gen = torch.Generator().manual_seed(seed)
    return {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=gen) * 0.2 for i, c in enumerate(LPIPS_CHANNELS)}


def write_random_weights(torch_home, seed: int = 0) -> Path:
    """Write all three weight files under ``torch_home/hub/checkpoints``; returns that folder.

    Only ever point this at a temporary folder: the files carry the real weights' names, so in a
    real torch.hub cache they would silently stand in for the pretrained networks.
    """
    import torch

    from alae_ray.metrics.networks import INCEPTION_FILE, LPIPS_FILE, VGG16_FILE

    folder = Path(torch_home) / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / INCEPTION_FILE).is_file():
        torch.save(random_fid_inception(seed).state_dict(), folder / INCEPTION_FILE)
    if not (folder / VGG16_FILE).is_file():
        torch.save(random_vgg16_features(seed), folder / VGG16_FILE)
    if not (folder / LPIPS_FILE).is_file():
        torch.save(random_lpips_linear(seed), folder / LPIPS_FILE)
    return folder

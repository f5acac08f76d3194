"""What several test modules share (test modules never import each other): the byte builders of
uploads, good and bad, and a private local Ray for the serving tests."""

from __future__ import annotations

import io
import struct
import zlib

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

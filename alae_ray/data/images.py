"""Decoding source images into square RGB uint8 arrays, and the area pyramid of levels.

Policy (also in docs/data.md):
- Colour: grayscale, palette, CMYK, YCbCr, LAB and 1-bit images are converted to RGB; 16-bit
  images are scaled to 8 bits (``round(v / 257)``); alpha (RGBA, LA, palette transparency) is
  composited over white. EXIF orientation is applied first.
- Shape: non-square images are centre-cropped to the largest centred square.
- Size: a square larger than the target resolution is reduced with area (box) resampling, the same
  filter as the level pyramid; a smaller one is skipped by default (``small="skip"``) or enlarged
  with bicubic resampling (``small="upscale"``).
- Corrupt, truncated or unidentifiable files are skipped; the caller records them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey bottom half
EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
SMALL_POLICIES = ("skip", "upscale")


class BadImage(Exception):
    """An image that is skipped; ``reason`` is a short code ("corrupt", "too_small")."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def to_rgb8(im: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB (see the module policy)."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im).astype(np.float64)
        if mode != "F":
            arr = arr / 257.0  # 16-bit range onto 8-bit; "I" from PNG is 16-bit data
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA")).astype(np.float32)
        alpha = rgba[..., 3:] / 255.0
        rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return Image.fromarray(np.rint(rgb).astype(np.uint8), "RGB")
    return im if mode == "RGB" else im.convert("RGB")


def centre_square(im: Image.Image) -> Image.Image:
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return im if w == h else im.crop((left, top, left + side, top + side))


def load_image(path: str | Path, resolution: int, small: str = "skip") -> tuple[np.ndarray, dict]:
    """(uint8 [3, R, R], notes) for one file; raises BadImage when it is skipped.

    ``notes`` says what was done to it: original mode and size, cropped, upscaled.
    """
    try:
        with Image.open(path) as im:
            im.load()
            notes = {"mode": im.mode, "size": list(im.size)}
            im = ImageOps.exif_transpose(im)
            rgb = to_rgb8(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadImage("corrupt", f"{type(exc).__name__}: {exc}") from None
    sq = centre_square(rgb)
    if sq.size != rgb.size:
        notes["cropped"] = True
    side = sq.size[0]
    if side < resolution:
        if small != "upscale":
            raise BadImage("too_small", f"{rgb.size[0]}x{rgb.size[1]} is smaller than {resolution}x{resolution}")
        sq = sq.resize((resolution, resolution), Image.Resampling.BICUBIC)
        notes["upscaled"] = True
    elif side > resolution:
        sq = sq.resize((resolution, resolution), Image.Resampling.BOX)
    return np.ascontiguousarray(np.asarray(sq, dtype=np.uint8).transpose(2, 0, 1)), notes


def area_downsample(x: np.ndarray) -> np.ndarray:
    """uint8 [N, C, H, W] -> [N, C, H/2, W/2]: 2x2 box average in float, rounded half to even.

    Identical to ``torch.round(avg_pool2d(x.float(), 2))``.
    """
    n, c, h, w = x.shape
    f = x.reshape(n, c, h // 2, 2, w // 2, 2).astype(np.float32).sum(axis=(3, 5)) * 0.25
    return np.rint(f).astype(np.uint8)


def pyramid(top: np.ndarray, resolutions: list[int]) -> dict[int, np.ndarray]:
    """Every requested level of uint8 [N, C, R, R], each the area-downsampled level above it."""
    out = {top.shape[-1]: top}
    x = top
    while x.shape[-1] > min(resolutions):
        x = area_downsample(x)
        out[x.shape[-1]] = x
    return {r: out[r] for r in resolutions}


def power_of_two_levels(resolution: int) -> list[int]:
    """4, 8, ..., resolution; raises DatasetError-compatible ValueError otherwise."""
    if resolution < 4 or resolution & (resolution - 1):
        raise ValueError(f"--resolution must be a power of two >= 4, got {resolution}")
    return [4 * 2**i for i in range(resolution.bit_length() - 2)]

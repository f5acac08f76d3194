"""Validating what clients send: uploaded images, latent codes, seeds, truncation, step counts.

Everything here is pure (bytes and JSON values in, numpy arrays or numbers out) and raises
``InputError`` with an HTTP status and a message safe to show a client: no paths, no tracebacks.

Image policy (the same as the dataset pipeline, ``alae_ray.data.images``):
- Accepted formats: PNG, JPEG, WebP, BMP, GIF (first frame), TIFF (first page).
- Size: the upload must be at most ``max_bytes`` (413), and its *declared* width x height at most
  ``max_pixels`` (413), checked from the header before any pixel is decoded (decompression bombs).
- Colour: grayscale, palette, CMYK, 16-bit and alpha images become 8-bit RGB (16-bit values are
  scaled by 1/257, alpha is composited over white). EXIF orientation is applied first.
- Shape: non-square images are centre-cropped to the largest centred square, which is then resized
  to the model resolution with area (box) resampling, or bicubic resampling when it is smaller.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from alae_ray.data.images import centre_square, to_rgb8

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
MAX_SEED = 2**63 - 1
PSI_RANGE = (-1.0, 2.0)  # beyond this truncation only extrapolates into garbage
STRENGTH_RANGE = (-20.0, 20.0)  # along a unit edit direction; w's own norm is O(1-10)
W_ABS_MAX = 1.0e3  # a trained w is O(1); anything far larger is a client bug


class InputError(ValueError):
    """Bad client input; ``status`` is the HTTP status to answer with, the message is client-safe."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 10 * 2**20  # one image file
    max_request_bytes: int = 64 * 2**20  # a whole request body (a style grid has many files)
    max_pixels: int = 4096 * 4096  # declared width x height of one image
    max_grid: int = 8  # sources or destinations of one style-mixing request
    max_steps: int = 32  # frames of one interpolation
    max_directions: int = 10  # edit directions offered (the strongest first)
    max_refine_steps: int = 200  # optimisation steps of one refined reconstruction (it holds a replica)


# --- images -----------------------------------------------------------------------------------


def open_upload(data: bytes, *, max_bytes: int, max_pixels: int, name: str = "image") -> Image.Image:
    """A decoded 8-bit RGB image (any size) from uploaded bytes; raises InputError."""
    if not data:
        raise InputError(f"{name}: the upload is empty", 400)
    if len(data) > max_bytes:
        raise InputError(f"{name}: the upload is {len(data)} bytes; the limit is {max_bytes} bytes", 413)
    try:
        im = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:
        raise InputError(f"{name}: the image declares too many pixels; the limit is {max_pixels}", 413) from None
    except (OSError, SyntaxError, ValueError, EOFError):
        # Pillow raises UnidentifiedImageError (an OSError) for non-images and SyntaxError for bad headers.
        raise InputError(f"{name}: not a readable image (accepted formats: {', '.join(FORMATS)})", 415) from None
    with im:
        w, h = im.size
        if w * h > max_pixels:  # checked on the header: nothing is decoded yet
            raise InputError(f"{name}: the image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}", 413)
        if w < 1 or h < 1:
            raise InputError(f"{name}: the image has no pixels", 400)
        try:
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = to_rgb8(im)
            rgb.load()
        except Image.DecompressionBombError:
            raise InputError(f"{name}: the image declares too many pixels; the limit is {max_pixels}", 413) from None
        except (OSError, SyntaxError, ValueError, EOFError, TypeError):
            raise InputError(f"{name}: the image data is truncated or corrupt", 400) from None
    return rgb


def fit_square(im: Image.Image, resolution: int) -> np.ndarray:
    """uint8 [R, R, 3]: centre crop to a square, then area-resize (bicubic when enlarging)."""
    sq = centre_square(to_rgb8(im))
    side = sq.size[0]
    if side != resolution:
        method = Image.Resampling.BOX if side > resolution else Image.Resampling.BICUBIC
        sq = sq.resize((resolution, resolution), method)
    return np.ascontiguousarray(np.asarray(sq, dtype=np.uint8))


def decode_image(data: bytes, resolution: int, limits: Limits = Limits(), name: str = "image") -> np.ndarray:
    """Uploaded bytes -> uint8 [R, R, 3] at the model resolution, under the module's policy."""
    return fit_square(open_upload(data, max_bytes=limits.max_upload_bytes, max_pixels=limits.max_pixels,
                                  name=name), resolution)


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), "RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def style_grid(sources: np.ndarray, destinations: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """The paper's Figure 9 layout: sources across the top, destinations down the left.

    ``sources`` [S, R, R, 3], ``destinations`` [D, R, R, 3], ``cells`` [D, S, R, R, 3] (row d, column
    s: destination d with the chosen styles of source s). The top-left corner is white.
    """
    s, d, r = len(sources), len(destinations), sources.shape[1]
    grid = np.full(((d + 1) * r, (s + 1) * r, 3), 255, dtype=np.uint8)
    for j in range(s):
        grid[:r, (j + 1) * r:(j + 2) * r] = sources[j]
    for i in range(d):
        grid[(i + 1) * r:(i + 2) * r, :r] = destinations[i]
        for j in range(s):
            grid[(i + 1) * r:(i + 2) * r, (j + 1) * r:(j + 2) * r] = cells[i, j]
    return grid


def strip(images: np.ndarray) -> np.ndarray:
    """[T, R, R, 3] -> one row [R, T*R, 3]."""
    return np.concatenate(list(images), axis=1)


# --- numbers and latent codes -----------------------------------------------------------------


def _reject_constant(name: str):
    raise InputError(f"non-finite number {name} is not allowed in JSON", 400)


def parse_json(body: bytes) -> Any:
    """A JSON body; NaN/Infinity literals and invalid JSON are 400s."""
    if not body:
        raise InputError("the request body is empty; expected JSON", 400)
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except InputError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InputError("the request body is not valid JSON", 400) from None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_w(value: Any, latent_size: int, style_layers: int) -> np.ndarray:
    """A latent code as float32 [S, L]: a list of L numbers (one w for every style input) or S lists."""
    if not isinstance(value, list) or not value:
        raise InputError(f"'w' must be a list of {latent_size} numbers (or {style_layers} such lists)", 422)
    rows = value if isinstance(value[0], list) else [value]
    if isinstance(value[0], list) and len(rows) != style_layers:
        raise InputError(f"'w' has {len(rows)} rows; per-layer codes need exactly {style_layers}", 422)
    for row in rows:
        if not isinstance(row, list) or len(row) != latent_size:
            got = len(row) if isinstance(row, list) else type(row).__name__
            raise InputError(f"'w' must have {latent_size} numbers per row, got {got}", 422)
        if not all(_is_number(v) for v in row):
            raise InputError("'w' must contain only numbers", 422)
    w = np.asarray(rows, dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.abs(w).max() > W_ABS_MAX:
        raise InputError(f"'w' values must be finite and within +-{W_ABS_MAX:g}", 422)
    w = w.astype(np.float32)
    return np.repeat(w, style_layers, axis=0) if len(rows) == 1 else w


def parse_seed(value: Any) -> int:
    """An integer seed in [0, 2**63 - 1]; decimal strings (form fields) are accepted."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputError(f"'seed' must be an integer, got {type(value).__name__}", 422)
    if not 0 <= value <= MAX_SEED:
        raise InputError(f"'seed' must be between 0 and {MAX_SEED}", 422)
    return value


def parse_float(value: Any, name: str, lo: float, hi: float) -> float:
    """A finite number in [lo, hi]; numeric strings (form fields) are accepted."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise InputError(f"'{name}' must be a number", 422) from None
    if not _is_number(value) or not math.isfinite(value):
        raise InputError(f"'{name}' must be a finite number", 422)
    if not lo <= value <= hi:
        raise InputError(f"'{name}' must be between {lo:g} and {hi:g}, got {value:g}", 422)
    return float(value)


def parse_psi(value: Any) -> float:
    return parse_float(value, "psi", *PSI_RANGE)


def parse_int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputError(f"'{name}' must be an integer", 422)
    if not lo <= value <= hi:
        raise InputError(f"'{name}' must be between {lo} and {hi}, got {value}", 422)
    return value

"""A procedurally generated image dataset with known generative factors ("shapes").

Each image is one filled shape on black, drawn from six independent factors sampled uniformly:

- ``shape``: 0 square, 1 ellipse, 2 triangle, 3 star (also the ``label``)
- ``scale``: half-size of the shape as a fraction of the image side, in [0.15, 0.35]
- ``rotation``: radians in [0, 2*pi)
- ``pos_x``, ``pos_y``: centre as a fraction of the image side, in [0.3, 0.7]
- ``hue``: colour hue in [0, 1) at full saturation and value

Item ``i`` depends only on ``(seed, i)``, so any subset renders identically in any order (which
is what makes an interrupted ``prepare`` resumable) and the factors stored per row are the exact
ground truth of the pixels. Rendering is supersampled then area-reduced, so edges are
anti-aliased at every resolution.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("square", "ellipse", "triangle", "star")
FACTORS = ("shape", "scale", "rotation", "pos_x", "pos_y", "hue")
RANGES = {"shape": (0, len(SHAPES)), "scale": (0.15, 0.35), "rotation": (0.0, 2 * np.pi),
          "pos_x": (0.3, 0.7), "pos_y": (0.3, 0.7), "hue": (0.0, 1.0)}


def outline(shape: int) -> np.ndarray:
    """Unit outline of a shape as [K, 2] points (radius about 1)."""
    if shape == 0:
        t = np.pi / 4 + np.arange(4) * np.pi / 2
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == 1:
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        return np.stack([np.cos(t), 0.55 * np.sin(t)], 1)  # not a circle, so rotation shows
    if shape == 2:
        t = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        return np.stack([np.cos(t), np.sin(t)], 1)
    t = -np.pi / 2 + np.arange(10) * np.pi / 5
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def sample_factors(seed: int, index: int) -> dict[str, float]:
    """The factors of item ``index``: a function of (seed, index) only."""
    rng = np.random.default_rng([seed, index])
    u = rng.random(6)
    lo = {k: RANGES[k][0] for k in FACTORS}
    hi = {k: RANGES[k][1] for k in FACTORS}
    out = {k: lo[k] + u[i] * (hi[k] - lo[k]) for i, k in enumerate(FACTORS)}
    out["shape"] = int(u[0] * len(SHAPES))
    return out


def render(factors: dict[str, float], resolution: int) -> np.ndarray:
    """uint8 [3, R, R] image of one item."""
    ss = max(1, min(4, 1024 // resolution))  # supersampling factor, bounded canvas size
    size = resolution * ss
    pts = outline(int(factors["shape"]))
    c, s = np.cos(factors["rotation"]), np.sin(factors["rotation"])
    pts = pts @ np.array([[c, s], [-s, c]])
    pts = pts * factors["scale"] * size + np.array([factors["pos_x"], factors["pos_y"]]) * size
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).polygon([tuple(p) for p in pts], fill=255)
    if ss > 1:
        mask = mask.resize((resolution, resolution), Image.Resampling.BOX)
    rgb = np.array(colorsys.hsv_to_rgb(factors["hue"], 1.0, 1.0), dtype=np.float32)
    m = np.asarray(mask, dtype=np.float32) / 255.0
    return np.rint(rgb[:, None, None] * 255.0 * m[None]).astype(np.uint8)


def generate(indices: np.ndarray | list[int], resolution: int, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(uint8 [N, 3, R, R], {factor: [N]}) for the given item indices."""
    facs = [sample_factors(seed, int(i)) for i in indices]
    images = np.stack([render(f, resolution) for f in facs]) if facs else np.zeros((0, 3, resolution, resolution), np.uint8)
    columns = {k: np.array([f[k] for f in facs], dtype=np.int64 if k == "shape" else np.float32) for k in FACTORS}
    return images, columns

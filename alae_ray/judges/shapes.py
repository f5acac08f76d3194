"""How well reconstructions of the procedural shapes keep each of their factors, measured from pixels.

Held-out items are rendered by ``alae_ray.data.synthetic`` from item indices no prepared dataset
reaches (``HELD_OUT_START`` on), so no model has trained on them. The renderer draws one filled shape
on black at full saturation and value, so each factor can be read back analytically:

- *position*: the centroid of the brightness (the largest channel, above the border's level);
- *hue*: the circular mean of the pixels' hue, weighted by their chroma;
- *scale*: from the shape's area and the area of the source item's unit outline;
- *rotation*: the phase of the complex moment of order k, the source shape's symmetry (ellipse 2,
  triangle 3, square 4, star 5), within its period of 360/k degrees;
- *shape*: the nearest class mean of scale- and rotation-free moment features, fitted on renders of
  other held-out items (a few hundred per class, made on the fly: nothing is downloaded or shipped).

Each factor is reported three ways: on the reconstructions, on the inputs themselves (the measure's
own floor, what a perfect reconstruction scores) and for the blind guess (the image centre, any fixed
hue, the middle scale, any fixed angle, chance). An image without a shape (a constant) is given the
blind guess for every factor. At 4x4 and 8x8 the moments carry little shape: the inputs' row says how
far a factor can be read there at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..data.synthetic import RANGES, SHAPES, generate, outline

HELD_OUT_START = 10**9  # item indices of judged items; datasets use 0..count-1
FIT_START = HELD_OUT_START + 10**7  # item indices of the class means' renders
SYMMETRY = np.array([4, 2, 3, 5])  # per shape class (square, ellipse, triangle, star): rotation period 360/k
MIN_MASS = 1.0  # less than one pixel's worth of shape: no shape found

Reconstruct = Callable[[np.ndarray], np.ndarray]  # uint8 [N, 3, R, R] -> uint8 [N, 3, R, R]


def _area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


UNIT_AREA = np.array([_area(outline(k)) for k in range(len(SHAPES))])  # area of each outline at scale 1


@dataclass
class Measured:
    """Per image: what the pixels say (fractions of the side, hue in turns, radians)."""

    found: np.ndarray  # bool: a shape is there
    x: np.ndarray
    y: np.ndarray
    hue: np.ndarray
    area: np.ndarray  # fraction of the image
    moments: np.ndarray  # complex [N, 6]: normalised complex moments of order 0..5 about the centroid
    compactness: np.ndarray


def measure(images: np.ndarray) -> Measured:
    """The factors' raw measures of uint8 [N, 3, R, R] images."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"the shapes judge reads uint8 RGB images [N, 3, R, R], got {images.dtype} {images.shape}")
    n, _, r, _ = images.shape
    rgb = images.astype(np.float64) / 255.0
    v, lo = rgb.max(1), rgb.min(1)
    border = np.concatenate([v[:, 0], v[:, -1], v[:, :, 0], v[:, :, -1]], axis=1)
    b = np.median(border, axis=1)[:, None, None]
    w = np.clip((v - b) / np.maximum(1.0 - b, 1e-6), 0.0, 1.0)  # how much shape each pixel holds
    mass = w.sum((1, 2))
    found = mass >= MIN_MASS
    safe = np.where(found, mass, 1.0)
    centres = np.arange(r) + 0.5
    cx = (w.sum(1) * centres).sum(1) / safe
    cy = (w.sum(2) * centres).sum(1) / safe
    z = (centres[None, None, :] - cx[:, None, None]) + 1j * (centres[None, :, None] - cy[:, None, None])
    moments = np.stack([(w * z**k).sum((1, 2)) / safe ** (1 + k / 2) for k in range(6)], 1)
    compactness = (w * np.abs(z) ** 2).sum((1, 2)) / safe**2  # 1/(2 pi) for a disc: scale-free

    chroma = v - lo
    hue6 = np.select([v == rgb[:, 0], v == rgb[:, 1]],
                     [((rgb[:, 1] - rgb[:, 2]) / np.maximum(chroma, 1e-9)) % 6.0,
                      (rgb[:, 2] - rgb[:, 0]) / np.maximum(chroma, 1e-9) + 2.0],
                     (rgb[:, 0] - rgb[:, 1]) / np.maximum(chroma, 1e-9) + 4.0)
    angle = hue6 * (np.pi / 3.0)
    weight = chroma * w
    hue = (np.arctan2((weight * np.sin(angle)).sum((1, 2)), (weight * np.cos(angle)).sum((1, 2)))
           / (2 * np.pi)) % 1.0
    found &= weight.sum((1, 2)) > 1e-3 * r * r / 1024  # no colour at all: no hue to read either
    return Measured(found, cx / r, cy / r, hue, mass / (r * r), moments, compactness)


def _features(m: Measured) -> np.ndarray:
    """Scale- and rotation-free: the moments' magnitudes and the compactness."""
    return np.column_stack([np.abs(m.moments[:, 2:]), m.compactness])


@dataclass
class ShapeClassifier:
    """Nearest class mean in standardised feature space, fitted on renders at one resolution."""

    resolution: int
    means: np.ndarray = field(repr=False)
    scale: np.ndarray = field(repr=False)
    offsets: np.ndarray = field(repr=False)  # arg of each class's symmetry moment at rotation 0

    @classmethod
    def fit(cls, resolution: int, per_class: int = 200, seed: int = 0) -> "ShapeClassifier":
        images, f = generate(np.arange(FIT_START, FIT_START + per_class * len(SHAPES)), resolution, seed)
        feats = _features(measure(images))
        mu, sd = feats.mean(0), feats.std(0) + 1e-12
        means = np.stack([((feats[f["shape"] == k] - mu) / sd).mean(0) for k in range(len(SHAPES))])
        offsets = np.array([_rotation_offset(k) for k in range(len(SHAPES))])
        return cls(resolution, means, np.stack([mu, sd]), offsets)

    def predict(self, m: Measured) -> np.ndarray:
        z = (_features(m) - self.scale[0]) / self.scale[1]
        return np.argmin(((z[:, None, :] - self.means[None]) ** 2).sum(-1), axis=1)


def _rotation_offset(shape: int, resolution: int = 256) -> float:
    """The phase of a shape's symmetry moment at rotation 0, read from a large render."""
    from ..data.synthetic import render

    image = render({"shape": shape, "scale": 0.3, "rotation": 0.0, "pos_x": 0.5, "pos_y": 0.5, "hue": 0.0}, resolution)
    k = SYMMETRY[shape]
    return float(np.angle(measure(image[None]).moments[0, k]))


def _circular(a: np.ndarray, b: np.ndarray, period: np.ndarray | float) -> np.ndarray:
    d = np.abs(a - b) % period
    return np.minimum(d, period - d)


@dataclass
class FactorScore:
    """One factor's mean error (or accuracy) on reconstructions, on the inputs, and for the blind guess."""

    factor: str
    unit: str
    reconstructions: float
    inputs: float
    blind: float
    higher_is_better: bool = False


@dataclass
class ShapesJudgement:
    resolution: int
    items: int
    scores: list[FactorScore]
    found: float  # share of reconstructions in which a shape was found

    def score(self, factor: str) -> FactorScore:
        return next(s for s in self.scores if s.factor == factor)

    @property
    def left(self) -> float:
        """One number for the whole judgement: the share of the blind guess's error the reconstructions
        leave, averaged over the factors (0: every factor exact; 1: no better than not looking)."""
        shares = [(100.0 - s.reconstructions) / (100.0 - s.blind) if s.higher_is_better else s.reconstructions / s.blind
                  for s in self.scores]
        return float(np.mean(shares))

    def to_dict(self) -> dict:
        return {"resolution": self.resolution, "items": self.items, "found": self.found, "left": self.left,
                "summary": self.summary(),
                **{s.factor: {"unit": s.unit, "reconstructions": s.reconstructions, "inputs": s.inputs,
                              "blind": s.blind} for s in self.scores}}

    def summary(self) -> str:
        """One line, the blind guess beside each factor."""
        parts = [f"{s.factor} {s.reconstructions:.3g}{s.unit} (blind {s.blind:.3g}{s.unit})" for s in self.scores]
        return f"{self.items} held-out shapes at {self.resolution}px: " + ", ".join(parts)

    def table(self) -> str:
        lines = [f"{'factor':<10} {'reconstructions':>16} {'inputs':>10} {'blind guess':>12}"]
        for s in self.scores:
            lines.append(f"{s.factor + ' (' + s.unit.strip() + ')':<10} {s.reconstructions:>16.3f} {s.inputs:>10.3f} "
                         f"{s.blind:>12.3f}")
        return "\n".join(lines)


def _errors(m: Measured, truth: dict[str, np.ndarray], r: int, classifier: ShapeClassifier) -> dict[str, np.ndarray]:
    """Per item: position (px), hue (degrees), scale (px of half-size), rotation (degrees), class right."""
    k = SYMMETRY[truth["shape"]]
    pos = np.hypot(m.x - truth["pos_x"], m.y - truth["pos_y"]) * r
    hue = _circular(m.hue, truth["hue"], 1.0) * 360.0
    scale = np.abs(np.sqrt(m.area / UNIT_AREA[truth["shape"]]) - truth["scale"]) * r
    theta = (np.angle(m.moments[np.arange(len(k)), k]) - classifier.offsets[truth["shape"]]) / k
    rot = np.degrees(_circular(theta, truth["rotation"], 2 * np.pi / k))
    right = (classifier.predict(m) == truth["shape"]) * 100.0
    blind = _blind(truth, r)
    lost = ~m.found  # no shape to read: the blind guess
    return {"position": np.where(lost, blind["position"], pos), "hue": np.where(lost, blind["hue"], hue),
            "scale": np.where(lost, blind["scale"], scale),
            "rotation": np.where(lost, blind["rotation"], rot), "shape": np.where(lost, blind["shape"], right)}


def _blind(truth: dict[str, np.ndarray], r: int) -> dict[str, np.ndarray]:
    """Per item, the expected error of guessing without looking."""
    k = SYMMETRY[truth["shape"]]
    mid = 0.5 * (RANGES["scale"][0] + RANGES["scale"][1])
    return {"position": np.hypot(truth["pos_x"] - 0.5, truth["pos_y"] - 0.5) * r,  # the image centre
            "hue": np.full(len(k), 90.0),  # any fixed hue: uniform error on [0, 180]
            "scale": np.abs(truth["scale"] - mid) * r,  # the middle of the range
            "rotation": 90.0 / k,  # any fixed angle: uniform error on [0, 180/k]
            "shape": np.full(len(k), 100.0 / len(SHAPES))}  # chance, in percent


UNITS = {"position": " px", "hue": "°", "scale": " px", "rotation": "°", "shape": "% right"}


def judge(reconstruct: Reconstruct, resolution: int, n: int = 256, seed: int = 0,
          classifier: ShapeClassifier | None = None) -> ShapesJudgement:
    """Render ``n`` held-out items at ``resolution``, reconstruct them, and score every factor."""
    if resolution < 4:
        raise ValueError(f"the shapes judge needs images of at least 4x4, got {resolution}")
    images, truth = generate(np.arange(HELD_OUT_START, HELD_OUT_START + n), resolution, seed)
    recon = np.asarray(reconstruct(images))
    if recon.shape != images.shape:
        raise ValueError(f"reconstructions have shape {recon.shape}, the inputs {images.shape}")
    classifier = classifier or ShapeClassifier.fit(resolution, seed=seed)
    measured = measure(recon)
    got = _errors(measured, truth, resolution, classifier)
    floor = _errors(measure(images), truth, resolution, classifier)
    blind = _blind(truth, resolution)
    scores = [FactorScore(f, UNITS[f], float(got[f].mean()), float(floor[f].mean()), float(blind[f].mean()),
                          higher_is_better=f == "shape") for f in ("position", "hue", "scale", "rotation", "shape")]
    return ShapesJudgement(resolution, n, scores, float(measured.found.mean()))


def fits(model) -> bool:
    """Whether a model (its ``ModelConfig``) makes what the judge reads: a StyleALAE on RGB images."""
    return model.kind == "style" and model.channels == 3


def network_reconstructor(network, level: int, alpha: float = 1.0) -> Reconstruct:
    """``Reconstruct`` of a core ``ALAE`` (a StyleALAE on RGB) at one level (``judges.models``)."""
    from .models import reconstructor

    m = network.cfg
    if not fits(m):
        raise ValueError(f"the shapes judge needs a StyleALAE on RGB images; this model is a {m.kind} ALAE on "
                         f"{m.channels}-channel images")
    return reconstructor(network, level, alpha)

"""How well a model's digits are digits, judged by a small classifier trained here on real MNIST.

The classifier (``DigitNet``: three conv blocks and a 128-D feature layer, on 32x32: MNIST's 28x28
zero-padded by 2 on each side, as the authors' StyleALAE MNIST configuration pads them) is trained
on real digits with a fixed seed, its weights cached as safetensors under the cache folder by a
digest of its data and recipe: made here on first use (about a minute on 2 CPUs), never shipped.

Digits (MNIST IDX files in one folder, ``alae_ray.data.idx``):

- the judged digits are t10k[8000:] (2,000 digits): the classifier never trains on them, and an
  MNIST dataset prepared by ``alae-ray prepare`` from t10k alone holds them out too;
- the classifier trains on the 60,000 training digits where the folder has them, else on t10k[:8000].

The judgement, each measure beside its floor (what real digits score) and the blind guess:

- *reconstruction*: the share of judged digits whose reconstruction the classifier assigns to the
  source's label (floor: its accuracy on the real digits; blind: one fixed image, the share of the
  class it falls in);
- *class balance*: the share of each class among generations (the classifier's labels); reported as
  the largest distance from a uniform 10%, in points (floor: the judged real digits' own labels);
- *Fréchet distance* between generations and the judged real digits in the classifier's feature
  space (floor: two halves of the real digits). This is not Inception FID and not comparable with it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..data.idx import load_mnist
from ..data.storage import cache_dir

RESOLUTION = 32
JUDGED = slice(8000, 10000)  # of t10k
FIT_T10K = slice(0, 8000)  # of t10k, where the folder has no training split
RECIPE = {"net": "DigitNet-v1", "epochs": 6, "batch": 64, "lr": 0.002, "shift_px": 2, "seed": 0}
CLASSES = 10

Reconstruct = Callable[[np.ndarray], np.ndarray]  # uint8 [N, 1, 32, 32] -> uint8 [N, 1, 32, 32]
Generate = Callable[[int], np.ndarray]  # n -> uint8 [n, 1, 32, 32]


def default_cache() -> Path:
    return cache_dir("judges")


def to_judged(images: np.ndarray) -> np.ndarray:
    """uint8 digits [N, 28, 28], [N, 1, 28, 28] or [N, 1, 32, 32] as [N, 1, 32, 32] (28x28 zero-padded)."""
    x = np.asarray(images)
    if x.dtype != np.uint8:
        raise ValueError(f"the digits judge reads uint8 images, got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] != x.shape[3] or x.shape[2] not in (28, RESOLUTION):
        raise ValueError(f"the digits judge reads one-channel 28x28 or 32x32 digits, got images of shape {x.shape}")
    return np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2))) if x.shape[2] == 28 else x


class DigitNet(nn.Module):
    def __init__(self):
        super().__init__()
        def block(i, o):
            return [nn.Conv2d(i, o, 3, padding=1), nn.ReLU(), nn.Conv2d(o, o, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.body = nn.Sequential(*block(1, 16), *block(16, 32), *block(32, 64), nn.Flatten(),
                                  nn.Linear(64 * 4 * 4, 128), nn.ReLU())
        self.head = nn.Linear(128, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _float(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)


@dataclass
class Digits:
    """Real digits of one folder: the classifier's training digits and the judged ones."""

    fit_images: np.ndarray  # uint8 [N, 1, 32, 32]
    fit_labels: np.ndarray
    images: np.ndarray  # the judged digits
    labels: np.ndarray
    source: str  # what the classifier trained on, in words

    @classmethod
    def load(cls, folder: str | Path) -> "Digits":
        folder = Path(folder)
        t10k_images, t10k_labels = load_mnist(folder, "t10k")
        if len(t10k_images) != 10000:
            raise ValueError(f"{folder}: t10k holds {len(t10k_images)} digits, not MNIST's 10,000")
        try:
            fit_images, fit_labels = load_mnist(folder, "train")
            source = f"MNIST train ({len(fit_images)} digits)"
        except FileNotFoundError:
            fit_images, fit_labels, source = t10k_images[FIT_T10K], t10k_labels[FIT_T10K], "MNIST t10k[:8000]"
        return cls(to_judged(fit_images), fit_labels, to_judged(t10k_images[JUDGED]), t10k_labels[JUDGED], source)

    def digest(self, recipe: dict) -> str:
        """Names the classifier these digits and ``recipe`` make."""
        h = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
        h.update(self.fit_images.tobytes())
        h.update(self.fit_labels.astype(np.int64).tobytes())
        return h.hexdigest()[:16]


class DigitsClassifier:
    """The judge's classifier: labels and 128-D features of uint8 digits."""

    def __init__(self, net: DigitNet, accuracy: float, source: str):
        self.net = net.eval()
        self.accuracy = accuracy  # on the judged real digits, in percent
        self.source = source

    @torch.no_grad()
    def labels_and_features(self, images: np.ndarray, chunk: int = 500) -> tuple[np.ndarray, np.ndarray]:
        x = to_judged(images)
        feats = [self.net.body(_float(x[i:i + chunk])) for i in range(0, len(x), chunk)]
        f = torch.cat(feats) if feats else torch.zeros(0, 128)
        return self.net.head(f).argmax(1).numpy(), f.double().numpy()

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.labels_and_features(images)[0]

    def features(self, images: np.ndarray) -> np.ndarray:
        return self.labels_and_features(images)[1]

    @classmethod
    def fit(cls, digits: Digits, cache: str | Path | None = None, recipe: dict | None = None) -> "DigitsClassifier":
        """The classifier of ``digits``: from the cache, else trained (seeded, deterministic on one
        device) and cached (temporary name, then rename)."""
        from safetensors.torch import load_file, save

        from ..data.storage import resolve, write_bytes_atomic

        recipe = {**RECIPE, **(recipe or {})}
        folder, name = Path(cache or default_cache()), f"digits-{digits.digest(recipe)}"
        weights, meta = folder / f"{name}.safetensors", folder / f"{name}.json"
        if weights.exists() and meta.exists():
            net = DigitNet()
            net.load_state_dict(load_file(str(weights)))
            info = json.loads(meta.read_text())
            return cls(net, info["accuracy"], info["source"])
        judge = cls(_train(digits, recipe), 0.0, digits.source)
        judge.accuracy = float((judge.predict(digits.images) == digits.labels).mean() * 100.0)
        loc = resolve(str(folder))  # weights first: the JSON beside them says the pair is whole
        write_bytes_atomic(loc, weights.name, save(judge.net.state_dict()))
        write_bytes_atomic(loc, meta.name, json.dumps({"accuracy": judge.accuracy, "source": digits.source,
                                                       "recipe": recipe}, indent=1).encode())
        return judge


def _train(digits: Digits, recipe: dict) -> DigitNet:
    """Adam on cross-entropy, each batch shifted by up to ``shift_px`` (the digits' centring varies
    more in generations than in MNIST), one seed for the init, the order and the shifts."""
    g = torch.Generator().manual_seed(recipe["seed"])
    torch.manual_seed(recipe["seed"])
    net = DigitNet()
    x, y = _float(digits.fit_images), torch.from_numpy(digits.fit_labels.astype(np.int64))
    opt = torch.optim.Adam(net.parameters(), lr=recipe["lr"])
    s, steps = recipe["shift_px"], recipe["epochs"] * -(-len(x) // recipe["batch"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=steps)
    net.train()
    for _ in range(recipe["epochs"]):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), recipe["batch"]):
            idx = order[i:i + recipe["batch"]]
            dx, dy = torch.randint(-s, s + 1, (2,), generator=g).tolist()
            batch = torch.roll(x[idx], (dy, dx), (2, 3))
            loss = nn.functional.cross_entropy(net(batch), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


@dataclass
class DigitsJudgement:
    items: int  # judged digits (reconstruction) and generations
    source: str  # what the classifier trained on
    classifier_accuracy: float  # % on the judged real digits: the reconstruction floor
    reconstruction: float  # % of reconstructions assigned their source's label
    reconstruction_blind: float  # % for one fixed image
    class_shares: list[float]  # % of generations per class
    balance: float  # largest |share - 10| in points
    balance_real: float  # the same for the judged real digits' labels
    frechet: float  # generations vs real digits, in the classifier's feature space
    frechet_real: float  # two halves of the real digits
    frechet_blind: float  # one fixed image vs the real digits

    def to_dict(self) -> dict:
        return {**asdict(self), "summary": self.summary()}

    def summary(self) -> str:
        return (f"{self.items} held-out digits: {self.reconstruction:.1f}% classified as their source "
                f"(real digits {self.classifier_accuracy:.1f}%, blind {self.reconstruction_blind:.1f}%); generations' "
                f"classes at most {self.balance:.1f} points from 10% (real {self.balance_real:.1f}); Fréchet distance "
                f"in the judge's features {self.frechet:.3g} (real vs real {self.frechet_real:.3g}, blind "
                f"{self.frechet_blind:.3g}; not Inception FID)")

    def table(self) -> str:
        rows = [("reconstructions classified as source (%)", self.reconstruction, self.classifier_accuracy,
                 self.reconstruction_blind),
                ("generations: largest class share off 10% (points)", self.balance, self.balance_real, 90.0),
                ("Fréchet distance in the judge's features", self.frechet, self.frechet_real, self.frechet_blind)]
        lines = [f"{'measure':<52} {'model':>10} {'real':>10} {'blind':>10}"]
        lines += [f"{name:<52} {m:>10.3f} {r:>10.3f} {b:>10.3f}" for name, m, r, b in rows]
        return "\n".join(lines)


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    from ..metrics.frechet import feature_statistics, frechet_distance

    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


def _balance(labels: np.ndarray) -> tuple[list[float], float]:
    shares = np.bincount(labels, minlength=CLASSES) / max(1, len(labels)) * 100.0
    return shares.round(3).tolist(), float(np.abs(shares - 100.0 / CLASSES).max())


def judge(reconstruct: Reconstruct, generate: Generate, digits: Digits, classifier: DigitsClassifier,
          n: int = 2000) -> DigitsJudgement:
    """Reconstruct the first ``n`` judged digits, generate ``n`` digits, and score both."""
    images, labels = digits.images[:n], digits.labels[:n]
    n = len(images)
    recon = to_judged(np.asarray(reconstruct(images)))
    if recon.shape != images.shape:
        raise ValueError(f"reconstructions have shape {recon.shape}, the inputs {images.shape}")
    fake_labels, fake_feats = classifier.labels_and_features(to_judged(np.asarray(generate(n))))
    real_labels, real_feats = classifier.labels_and_features(images)
    blind_labels, blind_feats = classifier.labels_and_features(np.zeros_like(images[:1]))  # a fixed image: black
    shares, balance = _balance(fake_labels)
    half = n // 2
    return DigitsJudgement(
        items=n, source=classifier.source,
        classifier_accuracy=float((real_labels == labels).mean() * 100.0),
        reconstruction=float((classifier.predict(recon) == labels).mean() * 100.0),
        reconstruction_blind=float((labels == blind_labels[0]).mean() * 100.0),
        class_shares=shares, balance=balance, balance_real=_balance(labels)[1],
        frechet=_frechet(fake_feats, real_feats), frechet_real=_frechet(real_feats[:half], real_feats[half:]),
        frechet_blind=_frechet(np.repeat(blind_feats, n, 0), real_feats))


def fits(model) -> bool:
    """Whether a model (its ``ModelConfig``) makes what the judge reads: the MLP ALAE of 28x28 digits or a
    StyleALAE of one-channel 32x32 ones."""
    if model.kind == "mlp":
        return model.mlp_input == 28 * 28
    return model.channels == 1 and model.max_resolution == RESOLUTION


def network_judged(network, level: int, seed: int = 0) -> tuple[Reconstruct, Generate]:
    """(reconstruct, generate) of a core ``ALAE`` of digits, on the judge's 32x32 (a 28x28 model gets
    MNIST's 28x28 and its outputs padded back); a model of anything else is refused in one line."""
    from .models import generator, reconstructor

    m = network.cfg
    if not fits(m):
        side = f"{int(round(m.mlp_input ** 0.5))}px" if m.kind == "mlp" else f"{m.channels}-channel {m.max_resolution}px"
        raise ValueError(f"the digits judge reads one-channel 28x28 or 32x32 digits; this model is a {m.kind} ALAE "
                         f"of {side} images")
    if m.kind == "style" and 4 * 2**level != RESOLUTION:
        raise ValueError(f"the digits judge reads 32x32 digits; this model is at {4 * 2**level}px (level {level})")
    rec, gen = reconstructor(network, level), generator(network, level, seed=seed)
    if m.kind == "mlp":
        return (lambda x: to_judged(rec(np.ascontiguousarray(x[:, :, 2:-2, 2:-2])))), (lambda n: to_judged(gen(n)))
    return rec, gen


def judge_network(network, level: int, mnist: str | Path, n: int = 2000, seed: int = 0,
                  cache: str | Path | None = None) -> DigitsJudgement:
    """The judgement of a core ``ALAE`` at ``level`` on the MNIST IDX files in ``mnist`` (the classifier
    from the cache, or trained and cached)."""
    reconstruct, generate = network_judged(network, level, seed=seed)
    digits = Digits.load(mnist)
    return judge(reconstruct, generate, digits, DigitsClassifier.fit(digits, cache), n=n)

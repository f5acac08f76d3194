"""The paper's MNIST classification protocol (Table 2) on an encoder's features.

Features: w = E(x) ("short", 50-D) and the encoder's layer before the last ("long", 1024-D), plus
raw pixels as a baseline. Classifiers, as the authors' scripts run them, on the features as they are:
1-nearest-neighbour (Euclidean) and a linear SVM, ``LinearSVC(max_iter=5000)`` with C = 0.02 (their
``Z_GAN.py``, ``svm_c0.02``) or C = 0.1 (their ``eval.py``, ``svm_c0.1``). Each trial draws a split,
fits on the train part, scores on the test part; the report is mean ± std over trials.

Splits of MNIST's 10,000 test digits (``t10k``):

* ``same_writers``: a random ``n_train`` / ``n_test`` split of all 10,000 digits (both halves of
  t10k contribute writers to both sides, so train and test share writers);
* ``different_writers``: train drawn from the first 5,000 digits, test from the last 5,000. MNIST's
  documentation says the first 5,000 come from NIST's SD-3 training writers (Census employees) and
  the last 5,000 from SD-1 (students), disjoint writer sets; the halves also differ in difficulty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

FeatureFn = Callable[[np.ndarray], np.ndarray]  # uint8 [N, 28, 28] -> features [N, D]


def split_same_writers(n_total: int, n_train: int, n_test: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if n_train + n_test > n_total:
        raise ValueError(f"same-writers split of {n_total} digits cannot hold {n_train} + {n_test}")
    order = rng.permutation(n_total)
    return order[:n_train], order[n_train:n_train + n_test]


def split_different_writers(n_total: int, n_train: int, n_test: int, rng: np.random.Generator,
                            boundary: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    if n_total < 2 * boundary or n_train > boundary or n_test > n_total - boundary:
        raise ValueError(f"different-writers split needs t10k's 10,000 digits and at most {boundary} per side "
                         f"(got {n_total} digits, {n_train} train, {n_test} test)")
    return rng.permutation(boundary)[:n_train], boundary + rng.permutation(n_total - boundary)[:n_test]


SPLITS = {"same_writers": split_same_writers, "different_writers": split_different_writers}


def accuracy_1nn(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    from sklearn.neighbors import KNeighborsClassifier

    return float(KNeighborsClassifier(1).fit(x_train, y_train).score(x_test, y_test))


def accuracy_linear_svm(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                        C: float = 0.02) -> float:
    """``LinearSVC(max_iter=5000, C=C)`` on the features as they are (the authors' scripts)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    with warnings.catch_warnings():  # an unconverged fit still gives its accuracy; iterations are capped
        warnings.simplefilter("ignore", ConvergenceWarning)
        svm = LinearSVC(C=C, max_iter=5000, random_state=0)
        return float(svm.fit(x_train, y_train).score(x_test, y_test))


CLASSIFIERS = {"1nn": accuracy_1nn,
               "svm_c0.02": lambda *a: accuracy_linear_svm(*a, C=0.02),  # their Z_GAN.py: the primary
               "svm_c0.1": lambda *a: accuracy_linear_svm(*a, C=0.1)}  # their eval.py


def pixel_features(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


@torch.no_grad()
def encoder_features(encoder: torch.nn.Module, images: np.ndarray, batch: int = 1000) -> dict[str, np.ndarray]:
    """{"short": E(x) [N, L], "long": the layer before the last [N, hidden]} of an MLP encoder."""
    from .mnist_models import mnist_vectors

    x = mnist_vectors(images)
    dev = next(encoder.parameters()).device
    short, long = [], []
    for i in range(0, len(x), batch):
        h = encoder.features(x[i:i + batch].to(dev))
        long.append(h.cpu())
        short.append(encoder.head(h).cpu())  # E(x) = head(features(x))
    return {"short": torch.cat(short).numpy(), "long": torch.cat(long).numpy()}


@dataclass
class ProtocolRow:
    method: str
    features: str
    classifier: str
    split: str
    mean: float
    std: float
    trials: list[float]


def run_protocol(features: dict[str, dict[str, np.ndarray]], labels: np.ndarray, *, splits=("same_writers",),
                 classifiers=("1nn", "svm_c0.02", "svm_c0.1"), n_train: int = 8000, n_test: int = 2000, trials: int = 5,
                 seed: int = 0, n_train_dw: int | None = None, n_test_dw: int | None = None) -> list[ProtocolRow]:
    """features: method -> feature name -> [N, D] (rows aligned with ``labels``); accuracy per trial.

    The same split indices are used for every method and feature set within a trial.
    """
    rows = []
    for split in splits:
        ntr, nte = (n_train, n_test) if split == "same_writers" else (n_train_dw or min(n_train, 4000),
                                                                     n_test_dw or min(n_test, 2000))
        rng = np.random.default_rng(seed)
        trial_splits = [SPLITS[split](len(labels), ntr, nte, rng) for _ in range(trials)]
        for method, sets in features.items():
            for fname, f in sets.items():
                for clf in classifiers:
                    acc = [CLASSIFIERS[clf](f[tr], labels[tr], f[te], labels[te]) for tr, te in trial_splits]
                    rows.append(ProtocolRow(method, fname, clf, split, float(np.mean(acc)), float(np.std(acc)), acc))
    return rows

"""Feature statistics and the Fréchet distance between two Gaussians (FID's formula).

Statistics are kept as *sums* (count, Σx, Σxxᵀ) in float64 so that partial results from many
workers merge exactly by addition; mean and covariance are derived at the end. The covariance uses
the unbiased (N - 1) normalisation, as ``numpy.cov`` and pytorch-fid do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class FeatureSums:
    """Mergeable sufficient statistics of a set of feature vectors.

    While there are no more vectors than dimensions the vectors themselves are kept too (``rows``):
    the covariance then has rank < D and ``fid_to_statistics`` takes the exact O(D² N) route.
    """

    count: int
    total: np.ndarray  # [D] float64, Σ x
    outer: np.ndarray  # [D, D] float64, Σ x xᵀ
    rows: np.ndarray | None = None  # [count, D] while count <= D

    @classmethod
    def empty(cls, dim: int) -> "FeatureSums":
        return cls(0, np.zeros(dim), np.zeros((dim, dim)), np.zeros((0, dim)))

    @classmethod
    def of(cls, features: np.ndarray) -> "FeatureSums":
        f = np.asarray(features, dtype=np.float64)
        return cls(len(f), f.sum(0), f.T @ f, f.copy() if len(f) <= f.shape[1] else None)

    def __add__(self, other: "FeatureSums") -> "FeatureSums":
        rows = None
        if self.rows is not None and other.rows is not None and self.count + other.count <= len(self.total):
            rows = np.concatenate([self.rows, other.rows])
        return FeatureSums(self.count + other.count, self.total + other.total, self.outer + other.outer, rows)

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        if self.count < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.count}")
        mu = self.total / self.count
        cov = (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)
        return mu, (cov + cov.T) / 2  # symmetric up to rounding


def merge_sums(parts: list[FeatureSums]) -> FeatureSums:
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu [D], sigma [D, D]) of a feature matrix [N, D]."""
    return FeatureSums.of(features).mean_cov()


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(a)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((Σ1 Σ2)^½) for PSD Σ1, Σ2.

    Computed as Σ √λ of the symmetric PSD matrix Σ1^½ Σ2 Σ1^½ (same eigenvalues as Σ1 Σ2), which is
    stable where ``scipy.linalg.sqrtm(Σ1 Σ2)`` returns complex noise for rank-deficient covariances
    (fewer samples than dimensions).
    """
    s1 = _psd_sqrt(sigma1)
    m = s1 @ sigma2 @ s1
    vals = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(vals, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1 - μ2‖² + tr(Σ1) + tr(Σ2) - 2 tr((Σ1 Σ2)^½), in float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics differ in shape: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    d = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))
    return max(d, 0.0)  # tiny negative values are rounding


def save_statistics(path: str | Path, mu: np.ndarray, sigma: np.ndarray, **meta) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, mu=mu, sigma=sigma, **{k: np.asarray(v) for k, v in meta.items()})
    tmp.replace(path)  # atomic: a crashed run never leaves a half-written cache entry


def load_statistics(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    with np.load(path) as f:
        meta = {k: f[k].item() if f[k].ndim == 0 else f[k] for k in f.files if k not in ("mu", "sigma")}
        return f["mu"], f["sigma"], meta


def frechet_distance_to_features(features: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between the Gaussian of ``features`` [N, D] and (mu2, sigma2).

    With fewer samples than dimensions Σ1 = A Aᵀ (A = centred features / √(N-1), D x N), and the
    non-zero eigenvalues of Σ1 Σ2 are those of the N x N matrix Aᵀ Σ2 A; that costs O(D² N)
    instead of two D x D eigendecompositions (seconds for D = 2048 on a CPU). Otherwise it falls
    back to ``frechet_distance``.
    """
    f = np.asarray(features, dtype=np.float64)
    n, dim = f.shape
    mu1, sigma1 = feature_statistics(f)
    if n > dim:
        return frechet_distance(mu1, sigma1, mu2, sigma2)
    a = (f - mu1).T / np.sqrt(n - 1)  # [D, N]
    m = a.T @ np.asarray(sigma2, np.float64) @ a
    vals = np.linalg.eigvalsh((m + m.T) / 2)
    diff = mu1 - np.asarray(mu2, np.float64)
    d = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.sqrt(np.clip(vals, 0.0, None)).sum())
    return max(d, 0.0)


def fid_to_statistics(sums: FeatureSums, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between the features summarised by ``sums`` and (mu2, sigma2)."""
    if sums.rows is not None and sums.count >= 2:
        return frechet_distance_to_features(sums.rows, mu2, sigma2)
    mu1, sigma1 = sums.mean_cov()
    return frechet_distance(mu1, sigma1, mu2, sigma2)

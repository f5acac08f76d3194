"""The metrics of ``alae-ray eval`` on one process, built from per-chunk pure functions.

Work is cut into chunks (a range of generated sample indices, or one batch of real images); each
chunk yields mergeable sums (``FeatureSums``) or a list of distances. ``LocalRunner`` runs the chunks
here; ``alae_ray.eval.distributed.RayRunner`` runs the very same chunk functions on Ray actors.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from ..api import Model
from ..metrics.frechet import FeatureSums, fid_to_statistics, load_statistics, merge_sums, save_statistics
from ..metrics.networks import inception_features
from .ppl import PPLResult, chunk_distances, summarize
from .real_images import dataset_identity, iter_real_uint8, match_channels, uint8_to_float
from .sampling import chunk_latents, chunks

# --- chunk functions (pure: same inputs, same outputs, wherever they run) ------------------------
# G's noise is on, as in the authors' metrics, from fixed seeds: every run of a metric agrees.


def generated_sums(model: Model, inception, start: int, count: int, seed: int, psi: float = 1.0) -> FeatureSums:
    z = chunk_latents(seed, start, count, model.latent_size)
    noise_seed = (seed * 1_000_003 + start + 1) % 2**31  # like z: a function of the chunk, not the runner
    return FeatureSums.of(inception_features(inception, model.generate(z=z, psi=psi, noise_seed=noise_seed)).numpy())


def real_sums(inception, images: np.ndarray) -> FeatureSums:
    return FeatureSums.of(inception_features(inception, uint8_to_float(images)).numpy())


def _reals(model: Model, images: np.ndarray) -> torch.Tensor:
    """uint8 [N, C, R, R] real images as the model's input (its channels, [-1, 1], on its device)."""
    return match_channels(uint8_to_float(images).to(model.device), model.channels)


def reconstructed_sums(model: Model, inception, images: np.ndarray) -> FeatureSums:
    return FeatureSums.of(inception_features(inception, model.reconstruct(_reals(model, images))).numpy())


@torch.no_grad()
def reconstruction_lpips(model: Model, lpips, images: np.ndarray) -> np.ndarray:
    x = _reals(model, images)
    return lpips(x, model.reconstruct(x)).double().cpu().numpy()


# --- runners ---------------------------------------------------------------------------------------


class LocalRunner:
    """Runs chunk functions in this process; networks are loaded on first use."""

    def __init__(self, model: Model, *, inception_weights=None, vgg_weights=None, lpips_weights=None):
        self.model = model
        self.weights = (inception_weights, vgg_weights, lpips_weights)
        self._inception = self._lpips = None

    @property
    def inception(self):
        if self._inception is None:
            from ..metrics.networks import load_inception

            self._inception = load_inception(self.model.device, self.weights[0])
        return self._inception

    @property
    def lpips(self):
        if self._lpips is None:
            from ..metrics.networks import load_lpips

            self._lpips = load_lpips(self.model.device, self.weights[1], self.weights[2])
        return self._lpips

    def inception_fingerprint(self) -> str:
        from ..metrics.networks import state_fingerprint

        return state_fingerprint(self.inception)

    def generated(self, n: int, batch: int, seed: int, psi: float) -> FeatureSums:
        return merge_sums([generated_sums(self.model, self.inception, s, c, seed, psi) for s, c in chunks(n, batch)])

    def real(self, batches: Iterable[np.ndarray]) -> FeatureSums:
        return merge_sums([real_sums(self.inception, b) for b in batches])

    def reconstructed(self, batches: Iterable[np.ndarray]) -> FeatureSums:
        return merge_sums([reconstructed_sums(self.model, self.inception, b) for b in batches])

    def lpips_rec(self, batches: Iterable[np.ndarray]) -> np.ndarray:
        return np.concatenate([reconstruction_lpips(self.model, self.lpips, b) for b in batches])

    def ppl_chunk(self, start: int, count: int, *, space: str, sampling: str, eps: float, seed: int,
                  crop: bool) -> np.ndarray:
        # one set of noise images for every w: PPL compares two images under the same noise
        return chunk_distances(mapping=self.model.map, synthesize=self.model.decode, distance=self.lpips,
                               latent_size=self.model.latent_size, start=start, count=count, space=space,
                               sampling=sampling, eps=eps, seed=seed, crop=crop)

    def ppl(self, *, n: int, space: str, sampling: str, eps: float, batch: int, seed: int, crop: bool) -> PPLResult:
        d = [self.ppl_chunk(s, c, space=space, sampling=sampling, eps=eps, seed=seed, crop=crop) for s, c in chunks(n, batch)]
        return summarize(np.concatenate(d), space, sampling, eps)


# --- real statistics, cached -------------------------------------------------------------------------


def statistics_cache_path(cache_dir: str | Path, uri: str, split: str, resolution: int, limit: int,
                          network: str) -> Path:
    """Cache file of real statistics; the key covers dataset identity, split, level, count and network."""
    identity = dataset_identity(uri, split)
    key = hashlib.sha1(f"{identity}|{split}|{resolution}|{limit}|{network}".encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9]+", "-", Path(uri.rstrip("/")).name or "data").strip("-") or "data"
    return Path(cache_dir).expanduser() / f"{stem}-{split}-{resolution}px-{key}.npz"


def real_statistics(runner, uri: str, split: str, resolution: int, limit: int, batch: int,
                    cache_dir: str | Path | None) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """(mu, sigma, count, from_cache) of pool3 features of up to ``limit`` real images."""
    path = None
    if cache_dir is not None:
        path = statistics_cache_path(cache_dir, uri, split, resolution, limit, runner.inception_fingerprint())
        if path.is_file():
            mu, sigma, meta = load_statistics(path)
            return mu, sigma, int(meta["count"]), True
    sums = runner.real(iter_real_uint8(uri, resolution, split, batch, limit))
    mu, sigma = sums.mean_cov()
    if path is not None:
        save_statistics(path, mu, sigma, count=sums.count, uri=uri, split=split, resolution=resolution)
    return mu, sigma, sums.count, False


# --- the metrics ---------------------------------------------------------------------------------------


@dataclass
class EvalOptions:
    data: str | None = None  # real images (URI); needed by fid, fid_rec, lpips_rec, mnist_protocol
    split: str = "test"
    num_samples: int = 50_000  # generated samples / PPL pairs / reconstructions
    num_real: int = 50_000  # real images for the statistics (at most what the split has)
    batch: int = 64
    seed: int = 0
    psi: float = 1.0  # truncation for fid (1 = none, the paper's setting)
    eps: float = 1e-4
    ppl_sampling: tuple[str, ...] = ("full", "end")
    crop: bool = False
    cache_dir: str | None = None


@dataclass
class MetricRow:
    metric: str
    value: float
    details: dict


def _need_data(opts: EvalOptions, metric: str) -> str:
    if not opts.data:
        raise ValueError(f"metric {metric} needs real images: pass --data URI")
    return opts.data


def metric_fid(runner, opts: EvalOptions) -> list[MetricRow]:
    data, res = _need_data(opts, "fid"), runner.model.resolution
    mu_r, sig_r, n_real, cached = real_statistics(runner, data, opts.split, res, opts.num_real, opts.batch, opts.cache_dir)
    sums = runner.generated(opts.num_samples, opts.batch, opts.seed, opts.psi)
    return [MetricRow("fid", fid_to_statistics(sums, mu_r, sig_r),
                      {"generated": opts.num_samples, "real": n_real, "psi": opts.psi, "resolution": res,
                       "real_stats_cached": cached})]


def _batches(data: str, res: int, split: str, batch: int, limit: int) -> Iterator[np.ndarray]:
    return iter_real_uint8(data, res, split, batch, limit)


def metric_fid_rec(runner, opts: EvalOptions) -> list[MetricRow]:
    data, res = _need_data(opts, "fid_rec"), runner.model.resolution
    mu_r, sig_r, n_real, cached = real_statistics(runner, data, opts.split, res, opts.num_real, opts.batch, opts.cache_dir)
    sums = runner.reconstructed(_batches(data, res, opts.split, opts.batch, opts.num_samples))
    return [MetricRow("fid_rec", fid_to_statistics(sums, mu_r, sig_r),
                      {"reconstructed": sums.count, "real": n_real, "split": opts.split, "resolution": res,
                       "real_stats_cached": cached})]


def metric_lpips_rec(runner, opts: EvalOptions) -> list[MetricRow]:
    data, res = _need_data(opts, "lpips_rec"), runner.model.resolution
    d = runner.lpips_rec(_batches(data, res, opts.split, opts.batch, opts.num_samples))
    return [MetricRow("lpips_rec", float(d.mean()), {"images": len(d), "std": float(d.std()), "split": opts.split})]


def _metric_ppl(space: str):
    def run(runner, opts: EvalOptions) -> list[MetricRow]:
        rows = []
        for sampling in opts.ppl_sampling:
            r = runner.ppl(n=opts.num_samples, space=space, sampling=sampling, eps=opts.eps, batch=opts.batch,
                           seed=opts.seed, crop=opts.crop)
            rows.append(MetricRow(f"ppl_{space}_{sampling}", r.value,
                                  {"pairs": r.count, "eps": r.eps, "unfiltered_mean": r.unfiltered_mean,
                                   "crop": opts.crop}))
        return rows
    return run


METRICS = {
    "fid": metric_fid,
    "fid_rec": metric_fid_rec,
    "ppl_z": _metric_ppl("z"),
    "ppl_w": _metric_ppl("w"),
    "lpips_rec": metric_lpips_rec,
}

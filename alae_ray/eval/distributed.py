"""``LocalRunner``'s chunks spread over Ray actors: same chunk functions, same results (up to the
order of floating-point summation, which is kept fixed by merging in chunk order).

Each actor loads the checkpoint and the feature networks once, from files the driver resolved
(so no worker downloads anything, and all of them use the same weights).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import ray
from ray.util import ActorPool

from ..api import Model
from ..metrics.frechet import FeatureSums, merge_sums
from .ppl import PPLResult, summarize
from .sampling import chunks, open_model


@ray.remote(num_cpus=1)
class FeatureWorker:
    def __init__(self, checkpoint: str, level: int, ema: bool, device: str, weights: dict, threads: int):
        import torch

        from .metrics import LocalRunner

        torch.set_num_threads(threads)
        model = open_model(checkpoint, level=level, ema=ema, device=device)
        self.runner = LocalRunner(model, inception_weights=weights.get("inception"), vgg_weights=weights.get("vgg"),
                                  lpips_weights=weights.get("lpips"))

    def generated(self, start: int, count: int, seed: int, psi: float) -> FeatureSums:
        from .metrics import generated_sums

        return generated_sums(self.runner.model, self.runner.inception, start, count, seed, psi)

    def real(self, images: np.ndarray) -> FeatureSums:
        from .metrics import real_sums

        return real_sums(self.runner.inception, images)

    def reconstructed(self, images: np.ndarray) -> FeatureSums:
        from .metrics import reconstructed_sums

        return reconstructed_sums(self.runner.model, self.runner.inception, images)

    def lpips_rec(self, images: np.ndarray) -> np.ndarray:
        from .metrics import reconstruction_lpips

        return reconstruction_lpips(self.runner.model, self.runner.lpips, images)

    def ppl_chunk(self, start: int, count: int, kw: dict) -> np.ndarray:
        return self.runner.ppl_chunk(start, count, **kw)

    def inception_fingerprint(self) -> str:
        return self.runner.inception_fingerprint()


class RayRunner:
    """The interface of ``LocalRunner``, with every chunk run by a pool of ``workers`` actors."""

    def __init__(self, model: Model, checkpoint: str, *, workers: int = 2, ema: bool = True,
                 weights: dict | None = None, device: str = "cpu", threads: int = 1):
        if not ray.is_initialized():
            ray.init(include_dashboard=False)
        self.model = model
        self.actors = [FeatureWorker.remote(checkpoint, model.level, ema, device, weights or {}, threads)
                       for _ in range(workers)]
        self.pool = ActorPool(self.actors)

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a)

    def _map(self, fn, items: Iterable) -> list:
        return list(self.pool.map(fn, items))  # ordered: the merge order does not depend on timing

    def inception_fingerprint(self) -> str:
        return ray.get(self.actors[0].inception_fingerprint.remote())

    def generated(self, n: int, batch: int, seed: int, psi: float) -> FeatureSums:
        return merge_sums(self._map(lambda a, c: a.generated.remote(c[0], c[1], seed, psi), chunks(n, batch)))

    def real(self, batches: Iterable[np.ndarray]) -> FeatureSums:
        return merge_sums(self._map(lambda a, b: a.real.remote(b), batches))

    def reconstructed(self, batches: Iterable[np.ndarray]) -> FeatureSums:
        return merge_sums(self._map(lambda a, b: a.reconstructed.remote(b), batches))

    def lpips_rec(self, batches: Iterable[np.ndarray]) -> np.ndarray:
        return np.concatenate(self._map(lambda a, b: a.lpips_rec.remote(b), batches))

    def ppl(self, *, n: int, space: str, sampling: str, eps: float, batch: int, seed: int, crop: bool) -> PPLResult:
        kw = dict(space=space, sampling=sampling, eps=eps, seed=seed, crop=crop)
        d = self._map(lambda a, c: a.ppl_chunk.remote(c[0], c[1], kw), chunks(n, batch))
        return summarize(np.concatenate(d), space, sampling, eps)

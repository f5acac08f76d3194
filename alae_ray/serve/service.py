"""What the HTTP API and the Gradio UI do, over any async model backend (a Serve handle in production).

A backend has async ``encode(images)``, ``synthesize(ws)``, ``reconstruct(images)`` and
``generate(seeds, psis)``, each returning its result(s) plus the number of requests that shared
the model's batch, unbatched ``directions(k)``, and ``refine(image, steps)``, an async iterator of
("step", step, loss) events ending with ("done", encoder's, refined, pixel errors). Composite
operations (style grids, interpolation, edits) are one encode call and one synthesize call each, so
their images travel through the model batched too. A backend with no room for a call now raises
``Overloaded``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Protocol

import numpy as np
import torch

from ..core.model import mix_styles
from .engine import lerp_codes
from .inputs import STRENGTH_RANGE, InputError, Limits, parse_float, parse_int, parse_psi, parse_seed, parse_w
from .styles import parse_layers

RETRY_AFTER_S = 5  # what an overloaded server tells clients to wait (Retry-After)


class Overloaded(Exception):
    """The model has no room for this request now (its queue or its refinements are full): a 503 with
    a client-safe message, to retry later."""


class Backend(Protocol):
    async def encode(self, images: np.ndarray) -> tuple[np.ndarray, int]: ...
    async def synthesize(self, ws: np.ndarray) -> tuple[np.ndarray, int]: ...
    async def reconstruct(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]: ...
    async def generate(self, seeds: np.ndarray, psis: np.ndarray) -> tuple[np.ndarray, int]: ...
    async def directions(self, k: int) -> np.ndarray: ...
    def refine(self, image: np.ndarray, steps: int) -> AsyncIterator[tuple]: ...


@dataclass
class Result:
    images: np.ndarray  # uint8 [N, R, R, 3]
    batch_size: int  # requests that shared the (last) model batch
    w: np.ndarray | None = None  # float32 [N, L]


class Service:
    def __init__(self, backend: Backend, info: dict[str, Any], limits: Limits = Limits()):
        self.backend, self.info, self.limits = backend, info, limits
        self.resolution = int(info["resolution"])
        self.latent_size = int(info["latent_size"])
        self.style_layers = int(info["style_layers"])
        self.num_levels = int(info["num_levels"])
        self.default_psi = float(info["truncation_psi"])
        self._directions: np.ndarray | None = None  # fetched from the model once

    async def encode(self, image: np.ndarray) -> Result:
        w, b = await self.backend.encode(image[None])
        return Result(np.empty((0,)), b, w)

    async def reconstruct(self, image: np.ndarray) -> Result:
        imgs, w, b = await self.backend.reconstruct(image[None])
        return Result(imgs, b, w)

    async def decode(self, w_json: Any) -> Result:
        ws = parse_w(w_json, self.latent_size, self.style_layers)
        imgs, b = await self.backend.synthesize(ws[None])
        return Result(imgs, b)

    async def generate(self, seed: Any, psi: Any = None) -> Result:
        s = parse_seed(seed)
        p = self.default_psi if psi is None else parse_psi(psi)
        imgs, b = await self.backend.generate(np.asarray([s], dtype=np.int64), np.asarray([p], dtype=np.float32))
        return Result(imgs, b)

    async def mix(self, sources: list[np.ndarray], destinations: list[np.ndarray], layers: Any) -> tuple[Result, range]:
        """Cells [D, S] flattened row-major into Result.images: destination d with source s's styles."""
        rng = parse_layers(layers if layers is not None else "coarse", self.num_levels)
        for name, group in (("source", sources), ("destination", destinations)):
            if not 1 <= len(group) <= self.limits.max_grid:
                raise InputError(f"style mixing needs 1 to {self.limits.max_grid} {name} images, got {len(group)}", 422)
        w, _ = await self.backend.encode(np.stack(sources + destinations))
        w_src, w_dst = torch.tensor(w[:len(sources)]), torch.tensor(w[len(sources):])  # copies: w may be read-only
        ws_dst = w_dst[:, None, None].expand(-1, 1, self.style_layers, -1)  # [D, 1, style inputs, L]
        codes = mix_styles(ws_dst, w_src[None], rng)  # [D, S, style inputs, L]
        imgs, b = await self.backend.synthesize(codes.flatten(0, 1).numpy())
        return Result(imgs, b), rng

    async def interpolate(self, a: np.ndarray, b: np.ndarray, steps: Any) -> Result:
        n = parse_int(steps, "steps", 2, self.limits.max_steps)
        w, _ = await self.backend.encode(np.stack([a, b]))
        codes = np.repeat(lerp_codes(w[0], w[1], n)[:, None], self.style_layers, axis=1)  # [n, S, L]
        imgs, bs = await self.backend.synthesize(codes)
        return Result(imgs, bs, w)

    async def directions(self) -> np.ndarray:
        """The model's strongest edit directions [k, L] (SeFa), fetched once."""
        if self._directions is None:
            self._directions = np.asarray(await self.backend.directions(self.limits.max_directions), np.float32)
        return self._directions

    async def edit(self, direction: Any, strength: Any, layers: Any = None, *, image: np.ndarray | None = None,
                   w_json: Any = None) -> Result:
        """An image (encoded first) or a code moved ``strength`` along edit direction ``direction`` at the
        style inputs ``layers`` (a band, start:stop, or "all", the default)."""
        dirs = await self.directions()
        k = parse_int(direction, "direction", 0, len(dirs) - 1)
        s = parse_float(strength, "strength", *STRENGTH_RANGE)
        every = layers is None or str(layers).strip().lower() in ("", "all")
        rng = parse_layers(f"0:{self.style_layers}" if every else layers, self.num_levels)
        if image is not None:
            w, _ = await self.backend.encode(image[None])
            codes = np.repeat(w[:, None], self.style_layers, axis=1)
        else:
            w = None
            codes = parse_w(w_json, self.latent_size, self.style_layers)[None].copy()
        codes[:, rng.start:rng.stop] += s * dirs[k]
        imgs, b = await self.backend.synthesize(codes.astype(np.float32))
        return Result(imgs, b, w)

    async def refine(self, image: np.ndarray, steps: Any, progress: Callable[[int, int, float], None] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(encoder's reconstruction, refined one, their mean squared pixel errors); ``progress(step,
        steps, loss)`` as the optimisation goes."""
        n = parse_int(steps, "steps", 0, self.limits.max_refine_steps)
        async for event in self.backend.refine(image, n):
            if event[0] == "done":
                return event[1], event[2], event[3]
            if progress is not None:
                progress(event[1], n, event[2])
        raise RuntimeError("the model ended the refinement without a result")

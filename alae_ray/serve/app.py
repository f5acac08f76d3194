"""Ray Serve wiring: a batched model deployment, an HTTP/UI gateway, and the typed app builder.

``ModelServer`` holds the network (CPU or GPU) and batches concurrent calls with ``@serve.batch``;
its ``max_ongoing_requests`` is raised well above the batch size, since Serve never lets more
than that many requests into a replica and so a batch could never grow past it.
``Gateway`` decodes and validates uploads (CPU work that scales with its own replicas), calls the
model through a DeploymentHandle, and serves the API plus the Gradio UI from one ASGI app.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from typing import Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from .engine import open_engine
from .http import build_api
from .inputs import Limits
from .service import Service

log = logging.getLogger("alae_ray.serve")
UI_PATH = "/ui"


PROGRESS_EVERY_S = 0.25  # refinement progress events: often enough for a bar, few enough for the handle
GATEWAY_CPUS = 0.5  # per gateway replica: it parses requests and awaits the model


class ServeArgs(BaseModel):
    """Arguments of the application builder (``args:`` in deploy/serve.yaml, flags of ``alae-ray serve``)."""

    model_config = ConfigDict(extra="forbid")  # a misspelled key in serve.yaml is an error, not a default

    checkpoint: str = Field(description="checkpoint directory: a local path or s3://bucket/prefix")
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda or cuda:N")
    num_gpus: float = Field(0, ge=0, description="GPUs per model replica (set 1 for device cuda)")
    num_cpus: float = Field(1, gt=0, description="CPUs per model replica")
    model_replicas: int = Field(1, ge=1)
    gateway_replicas: int = Field(1, ge=1)
    level: Optional[int] = Field(None, description="level to serve (default: the top level)")
    max_batch_size: int = Field(16, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(0.01, ge=0, le=10)
    max_ongoing_requests: int = Field(0, ge=0, description="per model replica; 0: 4 x max_batch_size, at least 64")
    ui: bool = Field(True, description="mount the Gradio UI at /ui")
    lpips: bool = Field(True, description="refine with LPIPS too when its weights are on the replica's machine")
    max_upload_bytes: int = Field(Limits.max_upload_bytes, gt=0)
    max_request_bytes: int = Field(Limits.max_request_bytes, gt=0)
    max_pixels: int = Field(Limits.max_pixels, gt=0)

    def limits(self) -> Limits:
        return Limits(max_upload_bytes=self.max_upload_bytes, max_request_bytes=self.max_request_bytes,
                      max_pixels=self.max_pixels)

    def ongoing(self) -> int:
        return self.max_ongoing_requests or max(64, 4 * self.max_batch_size)


class CallerGone(Exception):
    """Ends a refinement whose caller stopped listening."""


def _split(parts: list, counts: list[int]) -> list:
    """Per-request slices of one concatenated batch result."""
    out, i = [], 0
    for n in counts:
        out.append(parts[i:i + n])
        i += n
    return out


@serve.deployment
class ModelServer:
    def __init__(self, checkpoint: str, device: str = "auto", level: Optional[int] = None,
                 max_batch_size: int = 16, batch_wait_timeout_s: float = 0.01, lpips: bool = True):
        self.engine = open_engine(checkpoint, device=device, level=level, lpips=lpips)
        for method in (self.encode, self.synthesize, self.reconstruct, self.generate):
            method.set_max_batch_size(max_batch_size)
            method.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.batches: dict[str, Counter] = {k: Counter() for k in ("encode", "synthesize", "reconstruct", "generate")}
        self.refinements = Counter()  # finished, stopped (the caller went away)
        log.info("serving %s at %dx%d on %s, batches up to %d, refinement loss: %s", self.engine.name,
                 self.engine.resolution, self.engine.resolution, self.engine.device, max_batch_size,
                 self.engine.info()["refine_loss"])

    def info(self) -> dict:
        return self.engine.info()

    def stats(self) -> dict:
        """Per batched method: {batch size: count}, and the largest batch seen; refinements finished and
        stopped."""
        return {**{k: {"histogram": {str(s): n for s, n in sorted(c.items())}, "max": max(c, default=0),
                       "batches": sum(c.values())} for k, c in self.batches.items()},
                "refine": {"finished": self.refinements["finished"], "stopped": self.refinements["stopped"]}}

    async def _run(self, name: str, fn, arrays: list[tuple[np.ndarray, ...]]) -> list:
        """Concatenate the requests' arrays, run ``fn`` off the event loop, split the results back."""
        n = len(arrays)
        self.batches[name][n] += 1
        counts = [len(a[0]) for a in arrays]
        joined = [np.concatenate([a[i] for a in arrays]) for i in range(len(arrays[0]))]
        # A worker thread: the loop keeps queueing the next batch while this one computes.
        out = await asyncio.to_thread(fn, *joined)
        outs = out if isinstance(out, tuple) else (out,)
        per = [_split(o, counts) for o in outs]
        return [(*(p[i] for p in per), n) for i in range(n)]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def encode(self, images: list[np.ndarray]) -> list:
        return await self._run("encode", self.engine.encode, [(x,) for x in images])

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def synthesize(self, ws: list[np.ndarray]) -> list:
        # Requests may send [N, L] or [N, S, L]; one batch needs one shape.
        s = self.engine.style_layers
        ws = [w if w.ndim == 3 else np.repeat(w[:, None], s, axis=1) for w in ws]
        return await self._run("synthesize", self.engine.synthesize, [(w,) for w in ws])

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def reconstruct(self, images: list[np.ndarray]) -> list:
        return await self._run("reconstruct", self.engine.reconstruct, [(x,) for x in images])

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def generate(self, seeds: list[np.ndarray], psis: list[np.ndarray]) -> list:
        return await self._run("generate", self.engine.generate, list(zip(seeds, psis)))


    def directions(self, k: int) -> np.ndarray:
        return self.engine.directions(k)

    async def refine(self, image: np.ndarray, steps: int):
        """Streams ("step", step, loss) at most every PROGRESS_EVERY_S, then ("done", encoder's, refined,
        pixel errors). An optimisation per request: not batched, and off the event loop so batches keep
        forming; a caller that goes away stops it at the next step."""
        loop, events, stop = asyncio.get_running_loop(), asyncio.Queue(), threading.Event()
        last = -PROGRESS_EVERY_S

        def progress(step: int, loss: float) -> None:
            nonlocal last
            if stop.is_set():
                self.refinements["stopped"] += 1
                raise CallerGone()
            if time.monotonic() - last >= PROGRESS_EVERY_S or step == steps:
                last = time.monotonic()
                loop.call_soon_threadsafe(events.put_nowait, ("step", step, loss))

        work = asyncio.ensure_future(asyncio.to_thread(self.engine.refine, image, steps, progress))
        # Queued after every step the thread queued: both go through the loop's FIFO of callbacks.
        work.add_done_callback(lambda _: events.put_nowait(None))
        try:
            while (event := await events.get()) is not None:
                yield event
            self.refinements["finished"] += 1
            yield ("done", *work.result())
        finally:
            stop.set()
            work.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody waits for it now


class HandleBackend:
    """The Service's backend over a DeploymentHandle to ModelServer."""

    def __init__(self, handle: DeploymentHandle):
        self.h = handle

    async def encode(self, images):
        return await self.h.encode.remote(images)

    async def synthesize(self, ws):
        return await self.h.synthesize.remote(ws)

    async def reconstruct(self, images):
        return await self.h.reconstruct.remote(images)

    async def generate(self, seeds, psis):
        return await self.h.generate.remote(seeds, psis)

    async def directions(self, k):
        return await self.h.directions.remote(k)

    async def refine(self, image, steps):
        async for event in self.h.options(stream=True).refine.remote(image, steps):
            yield event


@serve.deployment
@serve.ingress()
class Gateway:
    async def __init__(self, model: DeploymentHandle, limits: dict, ui: bool = True):
        self.model = model
        self.info = await model.info.remote()
        self.service = Service(HandleBackend(model), self.info, Limits(**limits))
        self.ui = ui

    async def _stats(self) -> dict:
        return await self.model.stats.remote()

    async def __serve_build_asgi_app__(self):
        app = build_api(self.service, stats=self._stats, ui_path=UI_PATH if self.ui else None)
        if not self.ui:
            return app
        import gradio as gr  # only replicas that serve the UI pay for importing Gradio

        from apps.gradio_app import build_ui, example_images

        examples = await example_images(self.service)
        blocks = build_ui(self.service, examples)
        return gr.mount_gradio_app(app, blocks, path=UI_PATH, max_file_size=self.service.limits.max_upload_bytes,
                                   allowed_paths=[examples.directory])


def build_app(args: ServeArgs):
    """The application: ``serve run alae_ray.serve.app:build_app checkpoint=...`` or deploy/serve.yaml."""
    if isinstance(args, dict):  # called from Python with a plain dict
        args = ServeArgs(**args)
    model = ModelServer.options(
        num_replicas=args.model_replicas, max_ongoing_requests=args.ongoing(),
        ray_actor_options={"num_cpus": args.num_cpus, "num_gpus": args.num_gpus},
    ).bind(args.checkpoint, args.device, args.level, args.max_batch_size, args.batch_wait_timeout_s, args.lpips)
    # The gateway only awaits the model: many requests in flight cost it little CPU.
    gateway = Gateway.options(num_replicas=args.gateway_replicas, max_ongoing_requests=4 * args.ongoing(),
                              ray_actor_options={"num_cpus": GATEWAY_CPUS})
    return gateway.bind(model, args.limits().__dict__, args.ui)

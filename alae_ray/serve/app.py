"""Ray Serve wiring: a batched model deployment, an HTTP/UI gateway, and the typed app builder.

``ModelServer`` holds the network (CPU or GPU) and batches concurrent calls with ``@serve.batch``,
bounded in images; its ``max_ongoing_requests`` is raised well above the batch size, since Serve
never lets more than that many requests into a replica and so a batch could never grow past it.
Refinements (long optimisations) run on threads of their own, at most ``max_concurrent_refines``
per replica, on slots added to the batched calls' ones; beyond that they are refused at once.
``Gateway`` decodes and validates uploads (CPU work that scales with its own replicas), calls the
model through a DeploymentHandle, and serves the API, plus a UI when the builder is given one: the
Gradio UI is composed on top (``apps.gradio_app:build_app``, what deploy/serve.yaml and ``alae-ray
serve`` deploy), so this layer never imports it.
A gateway queues at most ``max_queued_requests`` calls for busy model replicas: overload answers 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Optional

import numpy as np
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from .engine import open_engine
from .http import build_api
from .inputs import Limits
from .service import RETRY_AFTER_S, Overloaded, Service

log = logging.getLogger("alae_ray.serve")
UI_PATH = "/ui"
UI_APP = "apps.gradio_app:build_app"  # the application with the Gradio UI, by import path (it is a layer above)
# A UI on top of the gateway: (the gateway's ASGI app, its Service, the path to mount at) -> the ASGI app.
MountUI = Callable[[Any, Service, str], Awaitable[Any]]


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
    max_batch_images: int = Field(16, ge=1, le=1024, description="images per model batch, summed over the requests "
                                  "it joins; a larger request goes in pieces (max_batch_size: its former name)",
                                  validation_alias=AliasChoices("max_batch_images", "max_batch_size"))
    batch_wait_timeout_s: float = Field(0.01, ge=0, le=10)
    max_ongoing_requests: int = Field(0, ge=0, description="batched calls per model replica; 0: 4 x max_batch_images, "
                                                           "at least 64 (the refinements' slots come on top)")
    max_concurrent_refines: int = Field(1, ge=1, le=64, description="refinements one model replica runs at once; "
                                                                    "more are refused with 503")
    max_queued_requests: int = Field(64, ge=1, description="requests each gateway queues for busy model replicas; "
                                                           "more are refused with a JSON 503")
    ui: bool = Field(True, description="mount the Gradio UI at /ui")
    lpips: bool = Field(True, description="refine with LPIPS too when its weights are on the replica's machine")
    max_upload_bytes: int = Field(Limits.max_upload_bytes, gt=0)
    max_request_bytes: int = Field(Limits.max_request_bytes, gt=0)
    max_pixels: int = Field(Limits.max_pixels, gt=0)

    def limits(self) -> Limits:
        return Limits(max_upload_bytes=self.max_upload_bytes, max_request_bytes=self.max_request_bytes,
                      max_pixels=self.max_pixels)

    def ongoing(self) -> int:
        """Requests Serve lets into one model replica: the batched calls' slots plus the refinements'."""
        return (self.max_ongoing_requests or max(64, 4 * self.max_batch_images)) + self.max_concurrent_refines


class CallerGone(Exception):
    """Ends a refinement whose caller stopped listening."""


def _split(parts: list, counts: list[int]) -> list:
    """Per-request slices of one concatenated batch result."""
    out, i = [], 0
    for n in counts:
        out.append(parts[i:i + n])
        i += n
    return out


def _images(items: list[np.ndarray]) -> int:
    """A batch's size in images: each request's first argument is an array of N images (or codes, seeds)."""
    return sum(len(x) for x in items)


# Each method gets its own queue; the replica sets the real size and wait from ServeArgs.
batched = serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01, batch_size_fn=_images)


@serve.deployment
class ModelServer:
    def __init__(self, args: ServeArgs):
        self.engine = open_engine(args.checkpoint, device=args.device, level=args.level, lpips=args.lpips)
        for method in (self.encode, self.synthesize, self.reconstruct, self.generate):
            method.set_max_batch_size(args.max_batch_images)
            method.set_batch_wait_timeout_s(args.batch_wait_timeout_s)
        self.batches: dict[str, Counter] = {k: Counter() for k in ("encode", "synthesize", "reconstruct", "generate")}
        self.largest: Counter = Counter()  # images in the largest batch, per method
        # Refinements get threads of their own, so however many run, batched calls keep the default pool's.
        self.max_refines = args.max_concurrent_refines
        self.refine_pool = ThreadPoolExecutor(self.max_refines, thread_name_prefix="refine")
        self.refining = 0  # running now; only the event loop touches it
        self.refinements = Counter()  # finished, stopped (the caller went away), refused (all slots busy)
        model = self.engine.model
        log.info("serving %s at %dx%d on %s, batches up to %d images, %d refinement(s) at once, refinement loss: %s",
                 model.name, model.resolution, model.resolution, model.device,
                 args.max_batch_images, self.max_refines, self.engine.info()["refine_loss"])

    def info(self) -> dict:
        return self.engine.info()

    def stats(self) -> dict:
        """Per batched method: {requests per batch: count}, the most requests and images one batch held;
        refinements finished, stopped, refused and running."""
        return {**{k: {"histogram": {str(s): n for s, n in sorted(c.items())}, "max": max(c, default=0),
                       "batches": sum(c.values()), "max_images": self.largest[k]} for k, c in self.batches.items()},
                "refine": {**{k: self.refinements[k] for k in ("finished", "stopped", "refused")},
                           "running": self.refining}}

    async def _run(self, name: str, fn, arrays: list[tuple[np.ndarray, ...]]) -> list:
        """Concatenate the requests' arrays, run ``fn`` off the event loop, split the results back."""
        n = len(arrays)
        self.batches[name][n] += 1
        counts = [len(a[0]) for a in arrays]
        self.largest[name] = max(self.largest[name], sum(counts))
        joined = [np.concatenate([a[i] for a in arrays]) for i in range(len(arrays[0]))]
        # A worker thread: the loop keeps queueing the next batch while this one computes.
        out = await asyncio.to_thread(fn, *joined)
        outs = out if isinstance(out, tuple) else (out,)
        per = [_split(o, counts) for o in outs]
        return [(*(p[i] for p in per), n) for i in range(n)]

    @batched
    async def encode(self, images: list[np.ndarray]) -> list:
        return await self._run("encode", self.engine.encode, [(x,) for x in images])

    @batched
    async def synthesize(self, ws: list[np.ndarray]) -> list:
        # Requests may send [N, L] or [N, S, L]; one batch needs one shape.
        s = self.engine.model.style_layers
        ws = [w if w.ndim == 3 else np.repeat(w[:, None], s, axis=1) for w in ws]
        return await self._run("synthesize", self.engine.synthesize, [(w,) for w in ws])

    @batched
    async def reconstruct(self, images: list[np.ndarray]) -> list:
        return await self._run("reconstruct", self.engine.reconstruct, [(x,) for x in images])

    @batched
    async def generate(self, seeds: list[np.ndarray], psis: list[np.ndarray]) -> list:
        return await self._run("generate", self.engine.generate, list(zip(seeds, psis)))

    def directions(self, k: int) -> np.ndarray:
        return self.engine.directions(k)

    def _refined(self, _) -> None:
        self.refining -= 1

    async def refine(self, image: np.ndarray, steps: int):
        """Streams ("step", step, loss) at most every PROGRESS_EVERY_S, then ("done", encoder's, refined,
        pixel errors); or only ("busy", message) when max_concurrent_refines already run (an event, not an
        exception: Serve would log a traceback for each refusal of a flood). An optimisation per request:
        not batched, on the refinement threads so batches keep forming; a caller that goes away stops it
        at the next step."""
        if self.refining >= self.max_refines:
            self.refinements["refused"] += 1
            yield ("busy", f"the model is already running its {self.max_refines} refinement(s) at once "
                           f"(max_concurrent_refines); retry in {RETRY_AFTER_S} s")
            return
        self.refining += 1
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

        work = loop.run_in_executor(self.refine_pool, self.engine.refine, image, steps, progress)
        work.add_done_callback(self._refined)  # the slot frees when the thread ends, not when the caller leaves
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


@contextlib.contextmanager
def _queue_full():
    """Serve's refusal of a call when the model's queue is full, as Overloaded."""
    try:
        yield
    except BackPressureError:
        raise Overloaded(f"the model's queue is full (max_queued_requests); retry in {RETRY_AFTER_S} s") from None


class HandleBackend:
    """The Service's backend over a DeploymentHandle to ModelServer. A request with more images than one
    model batch holds goes in pieces, so no batch ever exceeds ``max_images``; a full queue or busy
    refinements raise Overloaded."""

    def __init__(self, handle: DeploymentHandle, max_images: int):
        self.h, self.max_images = handle, max_images

    async def _batched(self, method: str, *arrays: np.ndarray) -> tuple:
        k = self.max_images
        call = getattr(self.h, method)
        with _queue_full():
            outs = await asyncio.gather(*(call.remote(*(a[i:i + k] for a in arrays))
                                          for i in range(0, len(arrays[0]), k)))
        if len(outs) == 1:
            return outs[0]
        *parts, sizes = zip(*outs)
        return (*(np.concatenate(p) for p in parts), max(sizes))

    async def encode(self, images):
        return await self._batched("encode", images)

    async def synthesize(self, ws):
        return await self._batched("synthesize", ws)

    async def reconstruct(self, images):
        return await self._batched("reconstruct", images)

    async def generate(self, seeds, psis):
        return await self._batched("generate", seeds, psis)

    async def directions(self, k):
        with _queue_full():
            return await self.h.directions.remote(k)

    async def refine(self, image, steps):
        with _queue_full():
            async for event in self.h.options(stream=True).refine.remote(image, steps):
                if event[0] == "busy":
                    raise Overloaded(event[1])
                yield event


@serve.deployment
@serve.ingress()
class Gateway:
    async def __init__(self, model: DeploymentHandle, args: ServeArgs, ui: MountUI | None = None):
        self.model = model
        self.info = await model.info.remote()
        self.service = Service(HandleBackend(model, args.max_batch_images), self.info, args.limits())
        self.ui = ui

    async def _stats(self) -> dict:
        with _queue_full():
            return await self.model.stats.remote()

    async def __serve_build_asgi_app__(self):
        app = build_api(self.service, stats=self._stats, ui_path=UI_PATH if self.ui else None)
        return app if self.ui is None else await self.ui(app, self.service, UI_PATH)


def build_app(args: ServeArgs, ui: MountUI | None = None):
    """The application with the API alone (``serve run alae_ray.serve.app:build_app checkpoint=... ui=false``);
    ``ui`` mounts a UI on the gateway's app. With ``args.ui`` and no ``ui`` it refuses, naming the
    builder that has one, rather than silently serving no UI."""
    if isinstance(args, dict):  # called from Python with a plain dict
        args = ServeArgs(**args)
    if args.ui and ui is None:
        raise ValueError(f"ui is true but alae_ray.serve.app:build_app serves the API alone; deploy "
                         f"{UI_APP} for the UI, or set ui: false")
    model = ModelServer.options(
        num_replicas=args.model_replicas, max_ongoing_requests=args.ongoing(),
        max_queued_requests=args.max_queued_requests,
        ray_actor_options={"num_cpus": args.num_cpus, "num_gpus": args.num_gpus},
    ).bind(args)
    # The gateway only awaits the model: many requests in flight cost it little CPU. Its queue at the
    # proxy is as long, since the proxy's 503s have Serve's plain-text body and count requests merely
    # on their way (a burst is refused before any wait): overload is answered by the gateway, in JSON.
    gateway_slots = 4 * args.ongoing()
    gateway = Gateway.options(num_replicas=args.gateway_replicas, max_ongoing_requests=gateway_slots,
                              max_queued_requests=gateway_slots, backpressure_config={"retry_after_s": RETRY_AFTER_S},
                              ray_actor_options={"num_cpus": GATEWAY_CPUS})
    return gateway.bind(model, args, ui if args.ui else None)

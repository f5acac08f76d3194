"""The HTTP API: a FastAPI app over a ``Service``. Images in as multipart uploads, out as PNG; w as JSON.

Every error is JSON ``{"error": "..."}`` with a 4xx status for bad input (400 malformed, 413 too
large, 415 not an image, 422 invalid value), 503 with ``Retry-After`` when the model has no room
(``Overloaded``), and a bare 500 for anything else: no tracebacks, no server paths. Request bodies
are capped before they are parsed; JSON bodies are parsed and images decoded off the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any, Awaitable, Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from .inputs import InputError, Limits, decode_image, encode_png, parse_json, strip, style_grid
from .service import RETRY_AFTER_S, Overloaded, Service

log = logging.getLogger("alae_ray.serve")


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: 413 for a body over ``max_bytes``, by Content-Length or while streaming."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"the request body is over the limit of {self.max_bytes} bytes"
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    return await error(400, "bad Content-Length header")(scope, receive, send)
                if declared > self.max_bytes:
                    return await error(413, message)(scope, receive, send)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return msg

        async def tracking_send(msg):
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await error(413, message)(scope, receive, send)


async def _json(request: Request) -> Any:
    return await asyncio.to_thread(parse_json, await request.body())  # a large body takes a while to parse


async def _form(request: Request, limits: Limits):
    # Bounded multipart parsing: a grid has at most 2 * max_grid files plus a few fields.
    return await request.form(max_files=2 * limits.max_grid + 2, max_fields=16)


def _text(form, field: str, default: str) -> str:
    value = form.get(field, default)
    if isinstance(value, UploadFile):
        raise InputError(f"{field!r} must be a text field", 400)
    return value


async def _image(form, field: str, service: Service) -> Any:
    return (await _images(form, field, service, single=True))[0]


def _raw(request: Request) -> bool:
    """A body that is the image itself (no multipart to parse); its other fields are query parameters."""
    kind = request.headers.get("content-type", "")
    return kind.startswith("image/") or kind.startswith("application/octet-stream")


async def _upload(request: Request, service: Service, fields: tuple[str, ...] = ()) -> tuple[Any, dict]:
    """The request's one image and its text ``fields`` (missing ones absent): a raw body with the
    fields in the query string, or multipart ``image`` and fields."""
    if _raw(request):
        data = await request.body()
        if not data:
            raise InputError("empty request body: send the image's bytes", 400)
        image = await asyncio.to_thread(decode_image, data, service.resolution, service.limits, "image")
        return image, {k: request.query_params[k] for k in fields if k in request.query_params}
    form = await _form(request, service.limits)
    values = {k: _text(form, k, "") for k in fields}
    return await _image(form, "image", service), {k: v for k, v in values.items() if v != ""}


async def _images(form, field: str, service: Service, single: bool = False) -> list:
    items = form.getlist(field)
    if not items:
        raise InputError(f"missing multipart file field {field!r}", 400)
    if single and len(items) > 1:
        raise InputError(f"expected one file in field {field!r}, got {len(items)}", 400)
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, UploadFile):
            raise InputError(f"field {field!r} must be a file upload, not a text value", 400)
        data = await item.read()
        name = field if len(items) == 1 else f"{field}[{i}]"
        out.append(await asyncio.to_thread(decode_image, data, service.resolution, service.limits, name))
    return out


async def png(image, batch_size: int, extra: dict[str, str] | None = None) -> Response:
    headers = {"X-Batch-Size": str(batch_size), **(extra or {})}
    return Response(content=await png_bytes(image), media_type="image/png", headers=headers)


async def png_bytes(image) -> bytes:
    return await asyncio.to_thread(encode_png, image)  # off the event loop: a 1024x1024 PNG takes a while


def build_api(service: Service, stats: Callable[[], Awaitable[dict]] | None = None,
              ui_path: str | None = None) -> FastAPI:
    limits = service.limits
    app = FastAPI(title="ALAE", description="Adversarial Latent Autoencoder: encode, decode, reconstruct, "
                  "refine, edit, mix styles, generate, interpolate.", docs_url="/api/docs", openapi_url="/api/openapi.json",
                  redoc_url=None)

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError):
        return error(exc.status, exc.message)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded):
        return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("request to %s failed", request.url.path)  # the server log keeps the traceback
        return error(500, "internal error")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    if ui_path:
        @app.get("/", include_in_schema=False)
        async def root():
            return RedirectResponse(ui_path.rstrip("/") + "/")

    @app.get("/api/info")
    async def info():
        """Model resolution, latent size, style inputs, bands, limits."""
        return {**service.info, "limits": limits.__dict__}

    @app.get("/api/stats")
    async def get_stats():
        """Batch sizes seen by the model deployment (one replica's view)."""
        return await stats() if stats else {}

    @app.post("/api/encode")
    async def encode(request: Request):
        """multipart ``image`` (or the image as the body) -> ``{"w": [L numbers]}``."""
        img, _ = await _upload(request, service)
        r = await service.encode(img)
        return JSONResponse({"w": r.w[0].tolist(), "latent_size": service.latent_size, "batch_size": r.batch_size},
                            headers={"X-Batch-Size": str(r.batch_size)})

    @app.post("/api/reconstruct")
    async def reconstruct(request: Request, format: str = "json"):
        """multipart ``image`` (or the image as the body) -> ``{"w", "image_png_base64"}``; ``?format=png``
        returns the PNG alone."""
        if format not in ("json", "png"):
            raise InputError("'format' must be json or png", 422)
        img, _ = await _upload(request, service)
        r = await service.reconstruct(img)
        if format == "png":
            return await png(r.images[0], r.batch_size)
        return JSONResponse({"w": r.w[0].tolist(), "image_png_base64": base64.b64encode(await png_bytes(r.images[0])).decode(),
                             "batch_size": r.batch_size}, headers={"X-Batch-Size": str(r.batch_size)})

    @app.post("/api/decode")
    async def decode(request: Request):
        """JSON ``{"w": [L numbers] or [S lists of L]}`` -> PNG."""
        body = await _json(request)
        if not isinstance(body, dict) or "w" not in body:
            raise InputError("expected a JSON object with a 'w' field", 422)
        r = await service.decode(body["w"])
        return await png(r.images[0], r.batch_size)

    @app.post("/api/generate")
    async def generate(request: Request):
        """JSON ``{"seed": int, "psi": float (optional)}`` -> PNG."""
        body = await _json(request)
        if not isinstance(body, dict) or "seed" not in body:
            raise InputError("expected a JSON object with a 'seed' field", 422)
        r = await service.generate(body["seed"], body.get("psi"))
        return await png(r.images[0], r.batch_size)

    @app.post("/api/mix")
    async def mix(request: Request):
        """multipart ``source`` (1+ files), ``destination`` (1+ files), ``layers`` -> PNG.

        One source and one destination: the mixed image. Otherwise the Figure 9 grid: sources across
        the top, destinations down the left, each cell the destination with the source's styles.
        """
        form = await _form(request, limits)
        layers = _text(form, "layers", "coarse")
        srcs = await _images(form, "source", service)
        dsts = await _images(form, "destination", service)
        r, rng = await service.mix(srcs, dsts, layers)
        headers = {"X-Style-Layers": f"{rng.start}:{rng.stop}"}
        if len(srcs) == 1 and len(dsts) == 1:
            return await png(r.images[0], r.batch_size, headers)
        cells = r.images.reshape(len(dsts), len(srcs), *r.images.shape[1:])
        return await png(style_grid(np.stack(srcs), np.stack(dsts), cells), r.batch_size, headers)

    @app.post("/api/interpolate")
    async def interpolate(request: Request):
        """multipart ``a``, ``b`` and ``steps`` (default 8) -> PNG strip of the frames, a to b."""
        form = await _form(request, limits)
        steps = _text(form, "steps", "8")
        a = await _image(form, "a", service)
        b = await _image(form, "b", service)
        r = await service.interpolate(a, b, steps)
        return await png(strip(r.images), r.batch_size, {"X-Steps": str(len(r.images))})

    @app.get("/api/directions")
    async def directions():
        """The model's strongest unsupervised edit directions in W (SeFa), strongest first, unit length."""
        d = await service.directions()
        return {"directions": d.tolist(), "count": len(d), "latent_size": service.latent_size}

    @app.post("/api/edit")
    async def edit(request: Request):
        """Move an image's code (multipart ``image``, ``direction``, ``strength``, ``layers``) or a code
        (JSON ``{"w", "direction", "strength", "layers"}``) along an edit direction -> PNG.

        ``layers``: a band (coarse / middle / fine), ``start:stop`` over style inputs, or all (default).
        """
        if request.headers.get("content-type", "").startswith("application/json"):
            body = await _json(request)
            if not isinstance(body, dict) or "w" not in body:
                raise InputError("expected a JSON object with a 'w' field (or a multipart 'image')", 422)
            fields, image, w = body, None, body["w"]
        else:  # multipart, or the image as the body and the fields in the query string
            (image, fields), w = await _upload(request, service, ("direction", "strength", "layers")), None
        for k in ("direction", "strength"):
            if fields.get(k) in (None, ""):
                raise InputError(f"missing field {k!r}", 422)
        r = await service.edit(fields["direction"], fields["strength"], fields.get("layers"), image=image, w_json=w)
        return await png(r.images[0], r.batch_size, {"X-Direction": str(fields["direction"])})

    @app.post("/api/refine")
    async def refine(request: Request, format: str = "json"):
        """multipart ``image`` and ``steps`` -> the encoder's reconstruction and the one refined by
        optimising w against the image, with their pixel errors; ``?format=png``: both side by side."""
        if format not in ("json", "png"):
            raise InputError("'format' must be json or png", 422)
        img, fields = await _upload(request, service, ("steps",))
        steps = fields.get("steps", "50")
        rec, refined, mse = await service.refine(img, steps)
        if format == "png":
            return await png(strip(np.stack([rec, refined])), 1)
        return {"encoder_png_base64": base64.b64encode(await png_bytes(rec)).decode(),
                "refined_png_base64": base64.b64encode(await png_bytes(refined)).decode(),
                "mse_encoder": float(mse[0]), "mse_refined": float(mse[1]), "steps": int(steps)}

    # Outermost user middleware: it also caps uploads to a UI mounted on this app later.
    app.add_middleware(BodyLimit, max_bytes=limits.max_request_bytes)
    return app

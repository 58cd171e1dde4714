"""The ASGI application of ``mobilenets serve`` (FastAPI): routes, errors, lifespan.

Routes: ``POST /v1/predict`` (one image), ``POST /v1/predict/batch`` (several),
``GET /v1/model``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics``, the page at ``/`` with
its files under ``/static/``, and FastAPI's own ``/openapi.json`` and ``/docs``. Decoding runs
on a small thread pool and the forward pass on the batcher's inference thread, so the event
loop only moves bytes. FastAPI is imported here, inside functions: ``import mobilenets``
never loads the ASGI stack.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations (``Request``,
# imported inside the functions) as objects.

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import torch

from ..errors import MobilenetsError
from .batching import Answer, Batcher
from .inputs import HTTPProblem, parse_top_k, request_images
from .metrics import Metrics
from .model import BadImage, ServedModel, load_served

logger = logging.getLogger("mobilenets.serve")

#: The environment variable through which ``--workers N`` hands each worker its settings.
CONFIG_ENV = "MOBILENETS_SERVE_CONFIG"
#: The page's files (package data), by the name the page asks for.
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}
#: The routes ``/metrics`` names; any other path is counted as ``other``.
ROUTES = ("/", "/v1/predict", "/v1/predict/batch", "/v1/model", "/healthz", "/readyz", "/metrics")
_IMAGE_BODY = {"requestBody": {"required": True, "content": {
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {"type": "string", "format": "binary"}}}}}},
    "parameters": [{"name": "top_k", "in": "query", "required": False,
                    "schema": {"type": "integer", "default": 5, "minimum": 1}}]}


@dataclass
class ServeOptions:
    """The server's limits (the ``serve`` flags of the same names)."""

    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_body_mb: float = 10.0
    max_files: int = 64
    top_k: int = 5

    @property
    def max_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


class _State:
    """What the routes share: the model, the batcher, the decode threads, the metrics."""

    def __init__(self, served: ServedModel, options: ServeOptions) -> None:
        self.served, self.options, self.metrics = served, options, Metrics()
        self.batcher = Batcher(served.predict, options.max_batch, options.max_wait_ms / 1000,
                               self.metrics.batch_done)
        self.decode = ThreadPoolExecutor(2, thread_name_prefix="mobilenets-decode")
        self.ready = False

    async def classify(self, data: bytes, top_k: int) -> tuple[Answer, float]:
        """One image's answer and its decode time."""
        start = time.perf_counter()
        image = await asyncio.get_running_loop().run_in_executor(self.decode, self.served.preprocess, data)
        decoded = time.perf_counter()
        return await self.batcher.submit(image, top_k), decoded - start

    async def warm_up(self) -> None:
        """One forward pass before ``/readyz`` says ready: the first is the slowest."""
        prep = self.served.preprocessing
        size, channels = int(prep.get("input_size", 224)), int(prep.get("channels", 3))
        await self.batcher.run_blocking(self.served.predict, torch.zeros(1, channels, size, size), 1)


def _timing(answer: Answer, decode_s: float, start: float) -> dict[str, float]:
    return {"total": round((time.perf_counter() - start) * 1000, 3), "decode": round(decode_s * 1000, 3),
            "queue": round(answer.queue_s * 1000, 3), "inference": round(answer.inference_s * 1000, 3)}


def _metrics_middleware(app: Any, metrics: Metrics) -> Any:
    """A plain ASGI middleware: each HTTP request's endpoint, status and time into ``metrics``."""
    async def middleware(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in ROUTES else "/static" if path.startswith("/static/") else "other"
        status, start = 500, time.perf_counter()

        async def record(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
        metrics.request_started()
        try:
            await app(scope, receive, record)
        finally:
            metrics.request_done(endpoint, status, time.perf_counter() - start)
    return middleware


def _add_error_handlers(app: Any) -> None:
    from fastapi.responses import JSONResponse

    async def refused(request: Any, exc: Exception) -> Any:
        status = getattr(exc, "status", 400)
        logger.warning("%s %s -> %d: %s", request.method, request.url.path, status, exc)
        return JSONResponse({"error": str(exc)}, status_code=status)

    async def failed(request: Any, exc: Exception) -> Any:
        logger.error("%s %s -> 500: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)

    for kind in (HTTPProblem, BadImage, MobilenetsError):
        app.add_exception_handler(kind, refused)
    app.add_exception_handler(Exception, failed)


def _add_predict_routes(app: Any, state: _State) -> None:
    from fastapi import Request
    from fastapi.responses import JSONResponse

    opts = state.options

    @app.post("/v1/predict", openapi_extra=_IMAGE_BODY, summary="Classify one image")
    async def predict(request: Request) -> JSONResponse:
        start = time.perf_counter()
        top_k = parse_top_k(request.query_params, opts.top_k)
        images = await request_images(request, opts.max_bytes, 1)
        if len(images) != 1:
            raise HTTPProblem(400, "one image per /v1/predict request; send several to /v1/predict/batch")
        answer, decode_s = await state.classify(images[0][1], top_k)
        return JSONResponse({"model": state.served.name, "top": answer.top, "batch_size": answer.batch_size,
                             "time_ms": _timing(answer, decode_s, start)})

    @app.post("/v1/predict/batch", openapi_extra=_IMAGE_BODY, summary="Classify several images")
    async def predict_batch(request: Request) -> JSONResponse:
        start = time.perf_counter()
        top_k = parse_top_k(request.query_params, opts.top_k)
        images = await request_images(request, opts.max_bytes, opts.max_files)
        results = await asyncio.gather(*(state.classify(data, top_k) for _, data in images),
                                       return_exceptions=True)
        for (name, _), result in zip(images, results):
            if isinstance(result, BadImage):
                raise BadImage(f"{name}: {result}", result.status)
            if isinstance(result, BaseException):
                raise result
        return JSONResponse({"model": state.served.name, "results": [
            {"name": name, "top": a.top, "batch_size": a.batch_size, "time_ms": _timing(a, d, start)}
            for (name, _), (a, d) in zip(images, results)]})


def _add_info_routes(app: Any, state: _State) -> None:
    from fastapi.responses import JSONResponse, PlainTextResponse, Response

    @app.get("/v1/model", summary="The model card")
    async def model() -> JSONResponse:
        s = state.served
        classes = s.meta.get("classes") or [str(i) for i in range(s.num_classes)]
        return JSONResponse({**s.card, "name": s.name, "backend": s.backend, "source": os.path.basename(s.source),
                             "classes": classes, "preprocessing": s.preprocessing,
                             "batching": asdict(state.options)})

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", summary="The model is loaded and warmed up")
    async def readyz() -> JSONResponse:
        return JSONResponse({"ready": state.ready}, status_code=200 if state.ready else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")

    def page_file(name: str) -> Response:
        data = resources.files(__package__).joinpath("static", name).read_bytes()
        return Response(data, media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return page_file("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPProblem(404, f"no such file: {name}")
        return page_file(name)


def build_app(served: ServedModel, options: ServeOptions | None = None) -> Any:
    """The ASGI app serving ``served``: start it with uvicorn (``mobilenets serve``)."""
    from fastapi import FastAPI

    state = _State(served, options or ServeOptions())

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        await state.batcher.start()
        await state.warm_up()
        state.ready = True
        logger.info("serving %s (%s backend)", served.name, served.backend)
        yield
        state.ready = False
        await state.batcher.stop()
        state.decode.shutdown(wait=True)

    app = FastAPI(title="mobilenets serve", summary=f"{served.name}: image classification",
                  lifespan=lifespan)
    app.state.serve = state
    _add_error_handlers(app)
    _add_predict_routes(app, state)
    _add_info_routes(app, state)
    app.add_middleware(_MetricsASGI, metrics=state.metrics)
    return app


class _MetricsASGI:
    """:func:`_metrics_middleware` in the class form Starlette's ``add_middleware`` takes."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.call = _metrics_middleware(app, metrics)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await self.call(scope, receive, send)


def configure_logging() -> None:
    """Refused requests and startup lines on stderr, beside uvicorn's own lines (the command
    calls this, never an import)."""
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     mobilenets: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def app_from_env() -> Any:
    """The app factory each ``--workers`` process calls (uvicorn imports it by name): the
    settings come from :data:`CONFIG_ENV`, written by the ``serve`` command."""
    config = json.loads(os.environ[CONFIG_ENV])
    configure_logging()
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    if config.get("reuse_memory"):
        from ..ops import cpu

        cpu.keep_freed_memory()
    served = load_served(config["source"], pretrained=config.get("pretrained"),
                         trust_code=bool(config.get("trust_code")), backend=config.get("backend", "auto"))
    return build_app(served, ServeOptions(**config["options"]))

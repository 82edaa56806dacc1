"""The HTTP/REST endpoints of the Open Inference Protocol (KServe v2), as one Starlette (ASGI) app.

Health (`/v2/health/live`, `/v2/health/ready`) answers without a token, so that load balancers and
orchestrators can probe it; every other endpoint needs the bearer token when the server has one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import pyimgano
from pyimgano.runtime.images import ImageLimits
from pyimgano.runtime.serve import logs, pipeline
from pyimgano.runtime.serve.batcher import Scored
from pyimgano.runtime.serve.errors import BadRequest, RequestError, Timeout, TooLarge, Unauthorized, Unavailable
from pyimgano.runtime.serve.metrics import CONTENT_TYPE, ServeMetrics
from pyimgano.runtime.serve.protocol import HEADER_LENGTH, encode_infer_response
from pyimgano.runtime.serve.registry import Registry, ServedVersion
from pyimgano.runtime.serve.settings import ServeSettings

SERVER_NAME = "pyimgano-serve"
EXTENSIONS = ["binary_tensor_data"]
# Outputs cheap enough to build on the event loop (maps and regions are built on a worker thread).
LIGHT_OUTPUTS = {"score", "label"}
# Content-Encoding of a request body (tritonclient's request_compression_algorithm) -> zlib wbits.
ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def error_response(exc: RequestError) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=exc.headers())


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """A compressed body expanded, refused (413) once it would pass `limit` bytes: a small body cannot
    become a large one unchecked."""
    inflater = zlib.decompressobj(ENCODINGS[encoding])
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"Content-Encoding {encoding}: the body does not decompress ({exc})") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise TooLarge(f"the {encoding} body expands past --max-request-bytes ({limit:,} bytes)")
    if not inflater.eof:
        raise BadRequest(f"Content-Encoding {encoding}: the body is cut short")
    return out


def prepare_and_submit(body: bytes, header_length: int | None, served: ServedVersion,
                       limits: ImageLimits) -> tuple[pipeline.Job, Future]:
    """The request decoded and queued for its batch from the worker thread itself: one hop between
    threads fewer than returning to the event loop in between."""
    job = pipeline.prepare(body, header_length, served, limits)
    return job, served.batcher.submit(job.images)


def answer(model: str, job: pipeline.Job, scored: Scored, served: ServedVersion) -> tuple[bytes, int | None, int]:
    """(response body, JSON header length or None, anomalous count), built on a worker thread."""
    tensors, parameters, anomalous = pipeline.respond(job, scored, served)
    content, json_length = encode_infer_response(model, served.label, job.request_id, tensors, list(job.binary),
                                                 parameters)
    return content, json_length, anomalous


class Service:
    def __init__(self, settings: ServeSettings, registry: Registry, metrics: ServeMetrics):
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.workers = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode")

    # ------------------------------------------------------------------ helpers
    def authorize(self, request: Request) -> None:
        token = self.settings.token
        if token is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value:
            raise Unauthorized("this server needs a bearer token: Authorization: Bearer <token>")
        if not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise Unauthorized("the bearer token is not this server's")

    async def in_worker(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self.workers, function, *args)

    async def read_body(self, request: Request) -> bytes:
        limit = self.settings.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise TooLarge(f"request body of {int(declared):,} bytes exceeds --max-request-bytes ({limit:,})")
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"request body exceeds --max-request-bytes ({limit:,} bytes)")
                chunks.append(chunk)
        except ClientDisconnect:
            raise BadRequest("the client disconnected before sending the whole body") from None
        body = b"".join(chunks)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding == "identity":
            return body
        if encoding not in ENCODINGS:
            raise BadRequest(f"Content-Encoding {encoding!r} is not one of {sorted(ENCODINGS)}")
        return await self.in_worker(inflate, body, encoding, limit)

    # ------------------------------------------------------------------ health and metadata
    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        ready, why = self.registry.ready()
        if ready:
            return JSONResponse({"ready": True})
        try:
            self.authorize(request)
        except Unauthorized:
            # Open to probes, but the reasons name models and files: those only with the token.
            why = "not ready (the reason is given with the bearer token, or on /v2/models/{model}/ready)"
        return JSONResponse({"ready": False, "error": why}, status_code=503)

    async def server_metadata(self, request: Request) -> Response:
        self.authorize(request)
        return JSONResponse({"name": SERVER_NAME, "version": pyimgano.__version__, "extensions": EXTENSIONS})

    async def model_metadata(self, request: Request) -> Response:
        self.authorize(request)
        model = request.path_params["model"]
        served = self.registry.find(model, request.path_params.get("version"))
        return JSONResponse(pipeline.metadata(served, self.registry.versions(model)))

    async def model_ready(self, request: Request) -> Response:
        self.authorize(request)
        model, version = request.path_params["model"], request.path_params.get("version")
        answer = {"name": model, **({"version": version} if version else {})}
        try:
            served = self.registry.find(model, version)
        except Unavailable as exc:
            return JSONResponse({**answer, "ready": False, "error": str(exc)}, status_code=503)
        return JSONResponse({**answer, "version": served.label, "ready": True})

    async def repository_index(self, request: Request) -> Response:
        self.authorize(request)
        body = await self.read_body(request)
        try:
            options = json.loads(body) if body.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(f"the index request is not valid JSON: {exc}") from None
        if not isinstance(options, dict) or not isinstance(options.get("ready", False), bool):
            raise BadRequest('the index request is {"ready": true|false} (optional)')
        return JSONResponse(self.registry.index(ready_only=options.get("ready", False)))

    async def prometheus(self, request: Request) -> Response:
        self.authorize(request)
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    # ------------------------------------------------------------------ inference
    async def infer(self, request: Request) -> Response:
        started = time.perf_counter()
        model, version = request.path_params["model"], request.path_params.get("version")
        labels = (model if self.registry.knows(model) else "", "")
        served = None
        try:
            self.authorize(request)
            served = self.registry.acquire(model, version)
            labels = (model, served.label)
            body = await self.read_body(request)
            header_length = request.headers.get(HEADER_LENGTH)
            if header_length is not None and not header_length.strip().isdigit():
                raise BadRequest(f"{HEADER_LENGTH} must be a byte count, got {header_length!r}")
            deadline = started + self.settings.request_timeout_s
            job, future = await self.in_worker(prepare_and_submit, body, int(header_length) if header_length else None,
                                               served, self.settings.limits)
            if job.timeout_s is not None:
                deadline = min(deadline, started + job.timeout_s)
            try:
                scored = await asyncio.wait_for(asyncio.wrap_future(future), max(deadline - time.perf_counter(), 0))
            except asyncio.TimeoutError:
                raise Timeout(f"no result within {deadline - started:.3f} s (--request-timeout-s "
                              f"{self.settings.request_timeout_s:g}, or the request's timeout parameter)") from None
            if set(job.outputs) <= LIGHT_OUTPUTS:
                # A few numbers: built here, without one more hop between threads (it shows in the latency).
                content, json_length, anomalous = answer(model, job, scored, served)
            else:
                content, json_length, anomalous = await self.in_worker(answer, model, job, scored, served)
        except RequestError as exc:
            self.count(labels, exc.status, exc.reason)
            return error_response(exc)
        except Exception as exc:  # noqa: BLE001 - a bug in one request answers 500 and is logged with its traceback
            self.count(labels, 500, "internal")
            logs.event("request_failed", logging.ERROR, exc_info=True, model=model, version=labels[1],
                       error=f"{type(exc).__name__}: {exc}")
            return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)
        finally:
            if served is not None:
                self.registry.release(served)
        self.count(labels, 200)
        self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)
        self.metrics.queue_time.labels(*labels).observe(scored.queue_seconds)
        self.metrics.images.labels(*labels).inc(len(job.images))
        self.metrics.anomalous.labels(*labels).inc(anomalous)
        if json_length is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(json_length)})

    def count(self, labels: tuple[str, str], status: int, reason: str | None = None) -> None:
        self.metrics.requests.labels(*labels, str(status)).inc()
        if reason is not None:
            self.metrics.failures.labels(*labels, reason).inc()


def create_app(settings: ServeSettings, on_serving=lambda registry: None) -> Starlette:
    """The app and everything behind it; the repository is scanned (and its models opened) at startup,
    before the first request is accepted, and every version is closed at shutdown, after the last."""
    metrics = ServeMetrics()
    registry = Registry(settings, metrics)
    service = Service(settings, registry, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await asyncio.get_running_loop().run_in_executor(None, registry.poll)
        registry.start_polling()
        on_serving(registry)
        yield
        await asyncio.get_running_loop().run_in_executor(None, registry.close)
        service.workers.shutdown()
        logs.event("stopped")

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return JSONResponse({"error": f"{request.method} {request.url.path}: {exc.detail}"},
                            status_code=exc.status_code)

    async def request_error(request: Request, exc: RequestError) -> Response:
        return error_response(exc)

    model = "/v2/models/{model}"
    version = "/v2/models/{model}/versions/{version}"
    routes = [
        Route("/v2/health/live", service.live, methods=["GET"]),
        Route("/v2/health/ready", service.ready, methods=["GET"]),
        Route("/v2", service.server_metadata, methods=["GET"]),
        Route("/v2/repository/index", service.repository_index, methods=["POST"]),
        Route("/metrics", service.prometheus, methods=["GET"]),
        Route(model, service.model_metadata, methods=["GET"]),
        Route(version, service.model_metadata, methods=["GET"]),
        Route(model + "/ready", service.model_ready, methods=["GET"]),
        Route(version + "/ready", service.model_ready, methods=["GET"]),
        Route(model + "/infer", service.infer, methods=["POST"]),
        Route(version + "/infer", service.infer, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, RequestError: request_error})
    app.state.registry = registry
    return app

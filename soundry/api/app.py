"""The FastAPI application: envelope everywhere, routes, and the services behind them."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from soundry import __version__
from soundry.api import files
from soundry.api.cog import routes as cog
from soundry.api.elevenlabs import routes as elevenlabs
from soundry.api.flexstack import feedback, stream, tasks, uploads, user
from soundry.api.http.docs import ErrorEnvelope
from soundry.api.http.envelope import error_response, ok
from soundry.api.http.metrics import install_metrics
from soundry.api.http.server import BodyTimeout, ConcurrencyCap, InFlight
from soundry.api.http.streams import AudioStreams, EventStreams
from soundry.api.openapi import install_openapi
from soundry.api.predictions.core import webhook_body
from soundry.api.replicate import routes as replicate
from soundry.api.stability import routes as stability
from soundry.config import Settings
from soundry.data_dir_lock import DataDirLock
from soundry.models.sources.added import open_catalog
from soundry.service.container import build_services
from soundry.service.errors import ServiceError
from soundry.tasks.uploads import UploadStore
from soundry.web import mount_playground

log = logging.getLogger(__name__)

_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 413: "payload_too_large", 422: "invalid_request",
               429: "rate_limited", 503: "unavailable"}


def _preload(engines, names: list[str]) -> None:
    for name in names:
        try:
            engines.get(name)
        except Exception as exc:  # reported by /readyz and in failed tasks
            log.warning("loading %s failed: %s", name, exc)


def _purge_uploads(uploads: UploadStore, interval: float, stop: threading.Event) -> None:
    """Delete expired uploads every ``interval`` seconds until ``stop`` is set."""
    while not stop.wait(interval):
        try:
            if n := uploads.purge_expired():
                log.info("deleted %d expired uploads", n)
        except Exception:
            log.exception("deleting expired uploads failed")


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route serves at the request's path (Starlette names only the first route's)."""
    return [method for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
            if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in app.router.routes)]


def create_app(settings: Settings | None = None, queue=None, start_worker: bool | None = None,
               data_lock: DataDirLock | None = None) -> FastAPI:
    """The app; ``data_lock``: the data directory's lock, already taken (``serve`` takes it before any migration),
    which the app releases when it stops; without it an embedded worker takes it as the app starts."""
    settings = settings or Settings.load()
    catalog = open_catalog(settings.data_dir, settings.model_paths)  # soundry models add / model_paths
    svc = build_services(settings, catalog, queue, webhook_body)
    run_worker = settings.worker if start_worker is None else start_worker

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        with contextlib.ExitStack() as stops:  # run last-registered first; each runs even when one before fails
            lock = data_lock
            if lock is None and run_worker and svc.engines is not None:  # an embedded worker: ours alone
                lock = DataDirLock(settings.data_dir).acquire()
            if lock is not None:
                stops.callback(lock.release)
            if svc.engines is not None:
                stops.callback(svc.engines.stop)
            if hasattr(svc.queue, "stop"):
                stops.callback(svc.queue.stop)
            stops.callback(svc.webhooks.stop)
            if run_worker and hasattr(svc.queue, "start"):
                svc.queue.start()
            if run_worker and svc.webhooks.resume():
                log.info("resumed pending webhook deliveries")
            if svc.engines is not None and run_worker:
                names = list(dict.fromkeys([settings.default_model, *settings.preload]))
                threading.Thread(target=_preload, args=(svc.engines, names), name="soundry-preload",
                                 daemon=True).start()
            purge_stop = threading.Event()
            stops.callback(purge_stop.set)
            threading.Thread(target=_purge_uploads, args=(svc.uploads, settings.upload_purge_interval, purge_stop),
                             name="soundry-upload-retention", daemon=True).start()
            yield

    app = FastAPI(title="soundry", version=__version__, lifespan=lifespan,
                  description="Self-hosted text-to-audio (AudioGen, MusicGen) with a FlexStack-compatible API.")
    app.state.services = svc
    app.state.event_streams = EventStreams(settings)
    app.state.audio_streams = AudioStreams(settings)
    in_flight = InFlight(settings.max_concurrent_requests, settings.max_unauthenticated_requests_per_address)

    @app.middleware("http")
    async def timing(request: Request, call_next):
        request.state.start_time = time.time()
        return await call_next(request)

    @app.exception_handler(ServiceError)  # FlexStack's envelope; the other wire APIs answer in their own shapes
    async def service_error(request: Request, exc: ServiceError):
        return error_response(request, exc.status, exc.code, exc.description, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return error_response(request, 422, "invalid_request", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = _HTTP_CODES.get(exc.status_code, "error")
        desc = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        headers = getattr(exc, "headers", None)
        if exc.status_code == 404 and desc == "Not Found":
            desc = f"no route {request.method} {request.url.path}"
        if exc.status_code == 405:  # one path may be served by several routes (GET and POST /v1/user/me)
            allowed = _allowed_methods(app, request)
            headers, desc = {**(headers or {}), "Allow": ", ".join(allowed)}, f"use {' or '.join(allowed)} here"
        return error_response(request, exc.status_code, code, desc, headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return error_response(request, 500, "internal_error", "the server failed to handle this request")

    @app.get("/healthz", tags=["ops"], summary="The process is up")
    def healthz(request: Request):
        return ok(request, {"status": "ok", "version": __version__})

    @app.get("/readyz", tags=["ops"], summary="Ready to serve: database reachable, default model settled",
             responses={503: {"model": ErrorEnvelope, "description": "not ready (`data` says which check failed); "
                                                                      "retry after `Retry-After`"}},
             description="503 until the database answers and, in embedded mode, the default model is loaded or "
                         "known to be unavailable (then tasks for it fail with the reason given here), and "
                         "not while the server is overloaded (as many requests in progress as it takes).")
    def readyz(request: Request):
        checks: dict = {}
        try:
            svc.store.count()
            checks["database"] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            checks["database"] = f"unreachable: {type(exc).__name__}"
        if svc.engines is not None:
            name = svc.engines.key(settings.default_model)
            failures = svc.engines.failures()
            checks["default_model"] = ("loaded" if name in svc.engines.loaded() else
                                       f"unavailable: {failures[name]}" if name in failures else "loading")
        else:
            checks["default_model"] = "served by workers"
        checks["requests"] = (f"overloaded: {in_flight.active} in progress, the limit is {in_flight.limit}"
                              if in_flight.overloaded else f"{in_flight.active} in progress")
        ready = checks["database"] == "ok" and checks["default_model"] != "loading" and not in_flight.overloaded
        if not ready:
            return error_response(request, 503, "not_ready", "; ".join(f"{k}: {v}" for k, v in checks.items()),
                                  {"Retry-After": "5"}, data=checks)
        return ok(request, {"status": "ready", **checks})

    install_openapi(app, settings, catalog)
    install_metrics(app, svc)
    app.add_middleware(ConcurrencyCap, in_flight=in_flight, known=svc.credentials.known)
    app.add_middleware(BodyTimeout, seconds=settings.body_timeout, min_rate=settings.body_min_rate)
    app.include_router(user.router)
    app.include_router(tasks.router)
    app.include_router(uploads.router)
    app.include_router(feedback.router)
    app.include_router(stream.router)
    app.include_router(elevenlabs.router)
    app.include_router(replicate.router)
    app.include_router(files.router)
    app.include_router(cog.router)
    app.include_router(stability.router)
    mount_playground(app)
    return app

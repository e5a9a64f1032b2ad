"""Cog's local HTTP API (``POST /predictions``, ``PUT /predictions/{id}``, ``POST /predictions/{id}/cancel``,
``GET /health-check``), which self-hosters' tools call, answered by the model the ``cog_model`` setting
names (default ``musicgen``) with that family's public inputs (``meta/musicgen``'s or ``sepal/audiogen``'s).

Unlike Cog, soundry wants ``Authorization: Bearer <API key or access token>`` on the prediction routes
(every prediction is a task of a user). Errors are FastAPI's ``{"detail": …}``, as Cog answers them.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from soundry.api import predictions as core
from soundry.api.deps import services
from soundry.api.envelope import ApiError
from soundry.api.routes_replicate import CreatePrediction, caller, cancel, either, translate, wait_until_end
from soundry.api.routes_tasks import parse_json_body
from soundry.api.tasks_view import link_base
from soundry.models.registry import model_family
from soundry.tasks.models import Task, User

router = APIRouter(tags=["Cog compatibility"])
COG_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")


class CogError(BaseModel):
    detail: str | list[dict[str, Any]] = Field(examples=["input.duration: Input should be greater than 0"])


class CogPrediction(BaseModel):
    id: str
    input: dict[str, Any]
    output: str | None = Field(description="the audio as a data: URL (a signed https link behind https)")
    status: str
    error: str | None
    logs: str
    metrics: dict[str, float]
    created_at: str | None
    started_at: str | None
    completed_at: str | None


class CogRequest(CreatePrediction):
    id: str | None = Field(None, description="ignored on POST (the answer names the prediction's id)")
    created_at: str | None = None
    output_file_prefix: str | None = Field(None, description="accepted; outputs are data: URLs or signed links")
    context: dict[str, str] | None = None


class Health(BaseModel):
    status: str = Field(examples=["READY"], description="STARTING, READY or SETUP_FAILED (the model's load)")
    setup: dict[str, Any]


def _error(status: int, detail, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _input_error(exc: core.InputError) -> JSONResponse:
    if exc.status != 422:
        return _error(exc.status, str(exc))
    return _error(422, [{"loc": ["body", "input", exc.field], "msg": exc.message, "type": "value_error"}])


_cog = core.answering_errors(_input_error, lambda exc: _error(exc.status, exc.description, exc.headers))


def _docs(status: int, *errors: int) -> dict:
    return {status: {"model": CogPrediction}, **{c: {"model": CogError} for c in (401, *errors)},
            429: either("CogError", "rate limited, or a cap on your tasks: retry after `Retry-After`"),
            503: either("CogError", "the queue is full or the server overloaded: retry after `Retry-After`")}


def _model_ref(svc) -> tuple[str, str]:
    """(the public model whose inputs Cog's API takes, the soundry model it runs)."""
    name = svc.settings.cog_model
    return ("sepal/audiogen" if model_family(name) == "audiogen" else "meta/musicgen"), name


def _view(request: Request, task: Task, cog_id: str | None = None) -> dict:
    out = core.prediction(task, core.output_of(services(request), task, link_base(request)), None, cog_id)
    for key in ("model", "version"):
        out.pop(key)
    return out


def _task_id(user: User, cog_id: str) -> str:
    """The task of a client-chosen id: one per user and id (another user's ids are not seen)."""
    return hashlib.sha256(f"cog:{user.id}:{cog_id}".encode()).hexdigest()[:32]


async def _start(request: Request, body: CogRequest, cog_id: str | None) -> tuple[Task, bool]:
    """The task of a create (an existing one for a PUT id already used): (task, created now?)."""
    svc = services(request)
    user = await run_in_threadpool(caller, request)
    task_id = _task_id(user, cog_id) if cog_id else None
    if task_id and (old := await run_in_threadpool(svc.store.get, task_id, user.id)) is not None:
        return old, False
    public, model = _model_ref(svc)
    prompt, negative, configs, webhook, events = await translate(request, public, body, model)
    wire = {"model": public, "version": core.version_id(public), "input": body.input, "events": events}
    if cog_id:
        wire["cog_id"] = cog_id
    try:
        task = await run_in_threadpool(core.create_task, svc, user, prompt, negative, configs, wire, webhook, task_id)
    except IntegrityError:  # the same id PUT twice at once: the other one made it
        return await run_in_threadpool(svc.store.get, task_id, user.id), False
    return task, True


@router.post("/predictions", summary="Cog: run a prediction (sync, or async with Prefer: respond-async)",
             description="The body is Cog's: `{\"input\": {...}, \"webhook\"?, \"webhook_events_filter\"?}`; the "
                         "inputs are those of meta/musicgen (or sepal/audiogen when `cog_model` is an AudioGen). "
                         "Without `Prefer: respond-async` the answer waits for the end (200); with it, 202 at once.",
             responses={**_docs(200, 400, 413, 422, 503), 202: {"model": CogPrediction}},
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": CogRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}})
@_cog
async def create_prediction(request: Request):
    body = await parse_json_body(request, CogRequest)
    task, _ = await _start(request, body, None)
    if "respond-async" in request.headers.get("prefer", ""):
        return JSONResponse(await run_in_threadpool(_view, request, task), status_code=202)
    task = await wait_until_end(request, task.id, None) or task
    return JSONResponse(await run_in_threadpool(_view, request, task))


@router.put("/predictions/{prediction_id}", status_code=202, summary="Cog: start a prediction with your id (async)",
            description="Idempotent: the same id again answers the prediction already started.",
            responses=_docs(202, 400, 413, 422, 503),
            openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                "schema": CogRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}})
@_cog
async def put_prediction(request: Request, prediction_id: str):
    if not COG_ID.fullmatch(prediction_id):
        raise core.InputError("id", "use 1 to 128 letters, digits, '_', '.' or '-'")
    body = await parse_json_body(request, CogRequest)
    if body.id is not None and body.id != prediction_id:
        raise core.InputError("id", "the body's id differs from the path's")
    task, _ = await _start(request, body, prediction_id)
    return JSONResponse(await run_in_threadpool(_view, request, task, prediction_id), status_code=202)


@router.post("/predictions/{prediction_id}/cancel", summary="Cog: cancel a prediction",
             responses={200: {"description": "canceled (or already ended)", "content": {"application/json": {
                 "schema": {"type": "object"}}}}, **{c: {"model": CogError} for c in (401, 404)},
                        429: either("CogError", "rate limited: retry after `Retry-After`")})
@_cog
async def cancel_prediction(request: Request, prediction_id: str):
    svc = services(request)
    user = await run_in_threadpool(caller, request)

    def find() -> Task | None:
        if len(prediction_id) > 128:
            return None
        return svc.store.get(_task_id(user, prediction_id), user.id) or (
            svc.store.get(prediction_id, user.id) if len(prediction_id) <= 64 else None)

    task = await run_in_threadpool(find)
    if task is None:
        raise ApiError(404, "not_found", f"no prediction {prediction_id} of yours")
    await run_in_threadpool(cancel, svc, task)
    return JSONResponse({})


@router.get("/health-check", summary="Cog: the server's state", responses={200: {"model": Health}},
            description="READY unless the `cog_model` failed to load here (SETUP_FAILED); the model loads at its "
                        "first prediction unless the `preload` setting names it.")
def health_check(request: Request):
    svc = services(request)
    failed = svc.engines is not None and svc.engines.key(svc.settings.cog_model) in svc.engines.failures()
    return JSONResponse({"status": "SETUP_FAILED" if failed else "READY",
                         "setup": {"status": "failed" if failed else "succeeded", "logs": ""}})

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

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from soundry.api.http.auth import services
from soundry.api.http.body import parse_json_body
from soundry.api.http.docs import either
from soundry.api.http.envelope import ApiError
from soundry.api.http.links import link_base
from soundry.api.http.live import task_end
from soundry.api.predictions import core
from soundry.api.predictions.create import CreatePrediction, caller, translate
from soundry.api.predictions.docs import PredictionFields
from soundry.service.configs import NON_BLANK_PATTERN
from soundry.service.errors import ServiceError, invalid
from soundry.tasks.models import Task, User

router = APIRouter(tags=["Cog compatibility"])
# Not "." or "..": a URL's path cannot carry them (clients resolve them as dot segments), so neither can an id
# (spelled without a look-ahead, which pydantic's regex engine lacks)
COG_ID_PATTERN = (r"^(?:[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}|\.[A-Za-z0-9_-][A-Za-z0-9_.-]{0,126}"
                  r"|\.\.[A-Za-z0-9_.-]{1,126})$")
COG_ID = re.compile(COG_ID_PATTERN)


class CogError(BaseModel):
    detail: str | list[dict[str, Any]] = Field(examples=["input.duration: Input should be greater than 0"])


class CogPrediction(PredictionFields):
    """A prediction as Cog answers it."""


class CogRequest(CreatePrediction):
    id: str | None = Field(None, max_length=128, pattern=COG_ID_PATTERN, description=(
        "the prediction's id: a POST with an id is idempotent, as a PUT to /predictions/{id}"))
    created_at: str | None = Field(None, max_length=64, description=(
        "the caller's timestamp, as Cog's clients send it; the answer's created_at is when soundry created it"))
    output_file_prefix: str | None = Field(None, max_length=2000, description=(
        "refused when set (422): soundry does not upload outputs; they are data: URLs or signed links"))
    context: dict[str, str] | None = Field(None, description="refused when not empty (422): soundry's models "
                                                             "take no per-prediction context")

    def unsupported(self) -> None:
        """422 naming a field Cog defines and soundry cannot honour (nothing is accepted and ignored)."""
        if self.output_file_prefix is not None:
            raise invalid("output_file_prefix", "soundry does not upload outputs; leave it out (the output is a "
                                                "data: URL, or a signed https link behind https)")
        if self.context:
            raise invalid("context", "soundry's models take no per-prediction context; leave it out")
        if self.stream:
            raise invalid("stream", "Cog's answers carry no stream URL; soundry's live audio is GET "
                                    "/v1/ai/audio_generation/{id}/stream (or Replicate's urls.stream)")


def _body_doc() -> dict:
    """Cog's create body as soundry takes it: the fields :meth:`CogRequest.unsupported` refuses are documented as
    what is taken (``output_file_prefix`` null, ``context`` empty, ``stream`` false), so the document says exactly
    which requests are accepted."""
    schema = CogRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    props = schema["properties"]
    props["output_file_prefix"] = {"type": "null", "title": "Output File Prefix",
                                   "description": props["output_file_prefix"]["description"]}
    props["context"]["anyOf"][0]["maxProperties"] = 0
    props["stream"] = {"anyOf": [{"const": False}, {"type": "null"}], "title": "Stream", "description": (
        "refused when true (422): Cog's answers carry no stream URL; soundry's live audio is GET "
        "/v1/ai/audio_generation/{id}/stream (or Replicate's urls.stream)")}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


class Health(BaseModel):
    status: str = Field(examples=["READY"], description="STARTING, READY or SETUP_FAILED (the model's load)")
    setup: dict[str, Any]


def _error(status: int, detail, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _answer(exc: ServiceError, request: Request) -> JSONResponse:
    """A refusal in Cog's shape (FastAPI's ``detail``: a list naming the input on 422), the status every API
    gives it."""
    model = getattr(request.state, "prediction_model", "")
    if exc.status != 422 or not exc.field or isinstance(exc, ApiError):  # the body's shape, a credential, ...
        text = exc.description if isinstance(exc, ApiError) else exc.described(lambda f: core.field_name(f, model))
        return _error(exc.status, text, exc.headers)
    field = core.field_name(exc.field, model)
    return _error(422, [{"loc": ["body", "input", field], "msg": exc.message, "type": "value_error"}])


_cog = core.answering_errors(_answer)


def _docs(status: int, *errors: int) -> dict:
    return {status: {"model": CogPrediction}, **{c: {"model": CogError} for c in (401, *errors)},
            429: either("CogError", "rate limited, or a cap on your tasks: retry after `Retry-After`"),
            503: either("CogError", "the queue is full or the server overloaded: retry after `Retry-After`")}


def _cog_spec(svc):
    """The catalog's entry of the ``cog_model`` setting; None when it names no model here."""
    return svc.catalog.find(svc.settings.cog_model)


def _public(spec) -> str:
    """The public model whose inputs Cog's API takes for a soundry model."""
    if spec.kind != "autoregressive":  # no public Cog model of its own: soundry's inputs for it
        return f"soundry/{spec.name}"
    return "sepal/audiogen" if spec.family == "audiogen" else "meta/musicgen"


def _model_ref(svc) -> tuple[str, str]:
    """(the public model whose inputs Cog's API takes, the soundry model it runs); 503 naming the setting when
    it names no model (an operator's mistake, not the client's)."""
    spec = _cog_spec(svc)
    if spec is None:
        raise ServiceError(503, "unavailable", f"the server's cog_model setting names no model here "
                                               f"({svc.settings.cog_model!r}); its operator should set it to one "
                                               f"of {', '.join(svc.catalog.names())}", {"Retry-After": "60"})
    return _public(spec), svc.settings.cog_model


def document(doc: dict, settings, catalog) -> None:
    """Cog's server runs one model (the ``cog_model`` setting), so its create bodies' ``input`` is documented as
    exactly that model's inputs: unknown ones refused, ``prompt`` required (soundry generates from a description),
    the task service's limits on the texts."""
    spec = catalog.find(settings.cog_model)
    known = core.models()
    if spec is None or _public(spec) not in known:
        return
    schema = known[_public(spec)][1].model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    props = schema["properties"]
    props["prompt"] = {"type": "string", "minLength": 1, "maxLength": settings.max_prompt_chars,
                       "pattern": NON_BLANK_PATTERN, "description": props["prompt"].get("description", "")}
    if "negative_prompt" in props:
        core.limit_text(props["negative_prompt"], settings.max_prompt_chars)
    for option in props["duration"].get("anyOf", [props["duration"]]):
        if option.get("type") == "number":  # the server's limit, or the model's longest clip where shorter
            option["maximum"] = min(option.get("maximum", settings.max_duration), settings.max_duration)
    schema["required"] = sorted({*schema.get("required", []), "prompt"})
    schema["additionalProperties"] = False
    schema["description"] = f"the inputs of {_public(spec)} (this server's cog_model: {spec.name})"
    for method, path in (("post", "/predictions"), ("put", "/predictions/{prediction_id}")):
        body = doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
        body["properties"]["input"] = schema
        body["required"] = ["input"]


def _view(request: Request, task: Task, cog_id: str | None = None) -> dict:
    out = core.prediction(task, core.output_of(services(request), task, link_base(request)), None, cog_id)
    for key in ("model", "version"):
        out.pop(key)
    return out


def _task_id(user: User, cog_id: str) -> str:
    """The task of a client-chosen id: one per user and id (another user's ids are not seen)."""
    return hashlib.sha256(f"cog:{user.id}:{cog_id}".encode()).hexdigest()[:32]


async def _start(request: Request, user: User, body: CogRequest, cog_id: str | None) -> Task:
    """The task of a create (for a PUT id already used, the one that exists)."""
    svc = services(request)
    public, model = _model_ref(svc)
    spec = await translate(request, public, body, model)
    if not cog_id:
        return await svc.tasks.submit(user, spec)
    spec.wire["cog_id"], spec.task_id = cog_id, _task_id(user, cog_id)
    task, _ = await svc.tasks.submit_once(user, spec)
    return task


@router.post("/predictions", summary="Cog: run a prediction (sync, or async with Prefer: respond-async)",
             description="The body is Cog's: `{\"input\": {...}, \"webhook\"?, \"webhook_events_filter\"?}`; the "
                         "inputs are those of meta/musicgen (or sepal/audiogen when `cog_model` is an AudioGen). "
                         "Without `Prefer: respond-async` the answer waits for the end (200); with it, 202 at once.",
             responses={**_docs(200, 400, 413, 422, 503), 202: {"model": CogPrediction}},
             openapi_extra=_body_doc())
@_cog
async def create_prediction(request: Request):
    user = await caller(request)
    body = await parse_json_body(request, CogRequest)
    body.unsupported()
    task = await _start(request, user, body, body.id)
    if "respond-async" in request.headers.get("prefer", ""):
        return JSONResponse(await run_in_threadpool(_view, request, task, body.id), status_code=202)
    task = await task_end(request, task.id) or task
    return JSONResponse(await run_in_threadpool(_view, request, task, body.id))


@router.put("/predictions/{prediction_id}", status_code=202, summary="Cog: start a prediction with your id (async)",
            description="Idempotent: the same id again answers the prediction already started.",
            responses=_docs(202, 400, 413, 422, 503), openapi_extra=_body_doc())
@_cog
async def put_prediction(request: Request, prediction_id: str = Path(json_schema_extra={
        "pattern": COG_ID_PATTERN, "maxLength": 128, "description": "1 to 128 letters, digits, '_', '.' or '-', not "
                                                                    "'.' or '..' (else 422 naming id)"})):
    user = await caller(request)
    if not COG_ID.fullmatch(prediction_id):
        raise invalid("id", "use 1 to 128 letters, digits, '_', '.' or '-' (not '.' or '..')")
    body = await parse_json_body(request, CogRequest)
    body.unsupported()
    if body.id is not None and body.id != prediction_id:
        raise invalid("id", "the body's id differs from the path's")
    task = await _start(request, user, body, prediction_id)
    return JSONResponse(await run_in_threadpool(_view, request, task, prediction_id), status_code=202)


@router.post("/predictions/{prediction_id}/cancel", summary="Cog: cancel a prediction",
             responses={200: {"description": "canceled (or already ended)", "content": {"application/json": {
                 "schema": {"type": "object"}}}}, **{c: {"model": CogError} for c in (401, 404)},
                        429: either("CogError", "rate limited: retry after `Retry-After`")})
@_cog
async def cancel_prediction(request: Request, prediction_id: str):
    svc = services(request)
    user = await caller(request)

    def find() -> Task | None:
        if len(prediction_id) > 128:
            return None
        return svc.store.get(_task_id(user, prediction_id), user.id) or (
            svc.store.get(prediction_id, user.id) if len(prediction_id) <= 64 else None)

    task = await run_in_threadpool(find)
    if task is None:
        raise ApiError(404, "not_found", f"no prediction {prediction_id} of yours")
    await run_in_threadpool(svc.tasks.cancel_task, task.id)
    return JSONResponse({})


@router.get("/health-check", summary="Cog: the server's state", responses={200: {"model": Health}},
            description="STARTING while the `cog_model` loads here, SETUP_FAILED when it failed to load or names no "
                        "model (`setup.logs` says why), else READY (the model loads at its first prediction unless "
                        "the `preload` setting names it).")
def health_check(request: Request):
    svc = services(request)
    status, logs = "READY", ""
    if _cog_spec(svc) is None:
        status, logs = "SETUP_FAILED", f"cog_model {svc.settings.cog_model!r} names no model here"
    elif svc.engines is not None:
        key = svc.engines.key(svc.settings.cog_model)
        failures = svc.engines.failures()
        if key in failures:
            status, logs = "SETUP_FAILED", failures[key]
        elif key in svc.engines.loading():
            status = "STARTING"
    setup = {"STARTING": "starting", "READY": "succeeded", "SETUP_FAILED": "failed"}[status]
    return JSONResponse({"status": status, "setup": {"status": setup, "logs": logs}})

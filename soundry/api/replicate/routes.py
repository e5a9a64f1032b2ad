"""Replicate's HTTP API (``/v1/predictions``, ``/v1/models/{owner}/{name}``, ``/v1/files``), answered by
soundry's models: point the unmodified ``replicate`` client at soundry (``base_url``) with a soundry API
key or access token as its token.

A prediction is an ordinary soundry task (see ``soundry.api.predictions.core`` for the inputs); errors come as
problem details (``{"title", "detail", "status"}``, plus ``invalid_fields`` on 422), which the client
raises as ``ReplicateError``. ``GET /v1/files/{id}`` shares its path with soundry's signed downloads
(``soundry.api.files`` sends requests without ``expires``/``sig`` here).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from soundry import __version__
from soundry.api.http.auth import services
from soundry.api.http.body import parse_json_body
from soundry.api.http.docs import either
from soundry.api.http.envelope import ApiError
from soundry.api.http.links import link_base
from soundry.api.http.live import task_end
from soundry.api.http.multipart import receive_upload
from soundry.api.predictions import core
from soundry.api.predictions.create import CreatePrediction, caller, translate
from soundry.api.predictions.docs import PredictionFields
from soundry.service.errors import ServiceError, invalid
from soundry.tasks.models import FINAL_STATUSES, Task, Upload, User
from soundry.tasks.result import download_url

router = APIRouter(prefix="/v1", tags=["Replicate compatibility"])
MAX_WAIT = 60  # seconds ``Prefer: wait`` holds a create (Replicate's most; the client reads for 60.5 s)
PAGE = 20  # predictions per page of GET /v1/predictions
TITLES = {400: "Bad request", 401: "Unauthenticated", 404: "Not found", 408: "Request timeout", 409: "Conflict",
          413: "Payload too large", 422: "Input validation failed", 429: "Too many requests",
          500: "Internal error", 503: "Service unavailable"}


class Problem(BaseModel):
    """RFC 7807 problem details, as Replicate answers errors."""

    title: str = Field(examples=["Input validation failed"])
    detail: str = Field(examples=["duration: Input should be greater than 0"])
    status: int
    invalid_fields: list[dict[str, str]] | None = Field(None, description="422: the fields refused")


class PredictionView(PredictionFields):
    model: str = Field(examples=["meta/musicgen"])
    version: str
    urls: dict[str, str]


class PredictionPage(BaseModel):
    next: str | None
    previous: str | None
    results: list[PredictionView]


class FileView(BaseModel):
    id: str
    name: str
    content_type: str
    size: int
    etag: str
    checksums: dict[str, str]
    metadata: dict[str, Any]
    created_at: str
    expires_at: str | None
    urls: dict[str, str]


class VersionView(BaseModel):
    id: str
    created_at: str
    cog_version: str
    openapi_schema: dict[str, Any]


class ModelView(BaseModel):
    url: str
    owner: str
    name: str
    description: str | None
    visibility: Literal["public", "private"]
    github_url: str | None
    paper_url: str | None
    license_url: str | None
    run_count: int
    cover_image_url: str | None
    default_example: dict | None
    latest_version: VersionView | None


class VersionPage(BaseModel):
    next: str | None
    previous: str | None
    results: list[VersionView]


class CreateVersionPrediction(CreatePrediction):
    version: str = Field(..., max_length=200, description="a version id (GET /v1/models/{owner}/{name}/versions), "
                                                          "or owner/name")


def versions() -> list[str]:
    """What ``version`` takes: each served model's version id, ``owner/name`` and ``owner/name:<version id>``."""
    out: list[str] = []
    for model in core.models():
        out += [core.version_id(model), model, f"{model}:{core.version_id(model)}"]
    return out


def document(doc: dict) -> None:
    """What the live catalog decides in this API's document: ``version``'s values (others are 422 naming it)."""
    body = doc["paths"]["/v1/predictions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    body["properties"]["version"]["enum"] = versions()


def problem(status: int, detail: str, headers: dict | None = None, field: str | None = None) -> JSONResponse:
    body: dict = {"title": TITLES.get(status, "Error"), "detail": detail, "status": status}
    if field is not None:
        body["invalid_fields"] = [{"type": "invalid", "field": field, "description": detail}]
    return JSONResponse(body, status_code=status, headers=headers)


def _problem_of(exc: ServiceError, request: Request) -> JSONResponse:
    """A refusal as problem details, the field named as the model's inputs name it (``invalid_fields`` on 422)."""
    model = getattr(request.state, "prediction_model", "")
    if isinstance(exc, ApiError):  # the HTTP layer's (the body's shape, a credential): its own words
        return problem(exc.status, exc.description, exc.headers, exc.field if exc.status == 422 else None)
    field = core.field_name(exc.field, model) if exc.status == 422 else None
    return problem(exc.status, exc.described(lambda f: core.field_name(f, model)), exc.headers, field or None)


# soundry's refusals answered as problem details (the envelope is FlexStack's)
problems = core.answering_errors(_problem_of)


def _docs(model: type | None, status: int = 200, *errors: int) -> dict:
    out: dict = {status: {"model": model}} if model is not None else {status: {"description": "done"}}
    for code in (401, *errors):
        out[code] = {"model": Problem}
    out[429] = either("Problem", "rate limited, or a cap on your tasks or uploads: retry after `Retry-After`")
    out[503] = either("Problem", "the queue is full or the server overloaded: retry after `Retry-After`")
    return out


def prefer_wait(request: Request) -> float | None:
    """Seconds ``Prefer: wait`` / ``wait=N`` asks the create to hold (None: answer at once)."""
    match = re.search(r"(?:^|[,;\s])wait(?:=(\d{1,6}))?(?:$|[,;\s])", request.headers.get("prefer", ""))
    if match is None:
        return None
    return float(min(MAX_WAIT, max(1, int(match.group(1) or MAX_WAIT))))


async def create(request: Request, user: User, model: str, body: CreatePrediction):
    task = await services(request).tasks.submit(user, await translate(request, model, body))
    wait = prefer_wait(request)
    if wait is not None:
        task = await task_end(request, task.id, wait) or task
    out = await run_in_threadpool(_view, request, task)
    if task.status not in FINAL_STATUSES:  # as Replicate: a wait that ran out answers "starting"
        out["status"] = "starting"
    return JSONResponse(out, status_code=201)


def _view(request: Request, task: Task) -> dict:
    svc, base = services(request), link_base(request)
    return core.prediction(task, core.output_of(svc, task, base), base, stream=core.stream_link(task, svc.settings,
                                                                                                 base))


_CREATE_DOC = ("Replicate's create. `Prefer: wait` (or `wait=N`, N ≤ 60) holds the answer until the prediction "
               "ends or N seconds pass (then its status reads `starting`), as `replicate.run` expects. Inputs: "
               "GET the model's version `openapi_schema`. Authenticate with `Authorization: Bearer <soundry API "
               "key or access token>` (or `Token`).")


def _body_doc(model: type[BaseModel]) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": model.model_json_schema(ref_template="#/components/schemas/{model}")}}}}


@router.post("/models/{owner}/{name}/predictions", status_code=201, summary="Create a prediction of a model",
             description=_CREATE_DOC, responses=_docs(PredictionView, 201, 400, 404, 413, 422, 503),
             openapi_extra=_body_doc(CreatePrediction))
@problems
async def create_model_prediction(request: Request, owner: str, name: str):
    user = await caller(request)
    model = _known(owner, name)
    return await create(request, user, model, await parse_json_body(request, CreatePrediction))


@router.post("/predictions", status_code=201, summary="Create a prediction of a version",
             description=_CREATE_DOC, responses=_docs(PredictionView, 201, 400, 413, 422, 503),
             openapi_extra=_body_doc(CreateVersionPrediction))
@problems
async def create_prediction(request: Request):
    user = await caller(request)
    body = await parse_json_body(request, CreateVersionPrediction)
    model = core.model_for_version(body.version)
    if model is None:
        raise invalid("version", f"unknown version {body.version!r}; GET /v1/models/{{owner}}/{{name}}/versions "
                                 "lists them")
    return await create(request, user, model, body)


@router.get("/predictions", summary="Your predictions, newest first", responses=_docs(PredictionPage, 200, 400),
            description=f"Every task of yours (created on any API), {PAGE} a page; `next` is the following page. "
                        "`output` is a signed link here (a page of data: URLs could be huge).")
@problems
async def list_predictions(request: Request):
    user = await caller(request)
    cursor = request.query_params.get("cursor", "0")
    if not cursor.isdigit() or int(cursor) > 10**9:
        raise ApiError(400, "bad_request", "cursor: use the next/previous links of a page")
    offset = int(cursor)
    tasks, total = await run_in_threadpool(services(request).store.history, user.id, PAGE, offset)
    base = link_base(request)  # outputs as signed links here: a page of data: URLs could be gigabytes
    results = [core.prediction(t, download_url(t, services(request).settings, base), base) for t in tasks]
    nxt = f"/v1/predictions?cursor={offset + PAGE}" if offset + PAGE < total else None
    prev = f"/v1/predictions?cursor={max(0, offset - PAGE)}" if offset > 0 else None
    return JSONResponse({"next": nxt, "previous": prev, "results": results})


def own_task(request: Request, task_id: str, user: User) -> Task:
    return services(request).tasks.own_task(user, task_id, "prediction")


@router.get("/predictions/{prediction_id}", summary="A prediction", responses=_docs(PredictionView, 200, 404))
@problems
async def get_prediction(request: Request, prediction_id: str):
    user = await caller(request)
    task = await run_in_threadpool(own_task, request, prediction_id, user)
    return JSONResponse(await run_in_threadpool(_view, request, task))


@router.post("/predictions/{prediction_id}/cancel", summary="Cancel a prediction",
             description="A prediction that has ended is answered as it is.",
             responses=_docs(PredictionView, 200, 404))
@problems
async def cancel_prediction(request: Request, prediction_id: str):
    user = await caller(request)
    task, _ = await run_in_threadpool(services(request).tasks.cancel, user, prediction_id, "prediction")
    return JSONResponse(await run_in_threadpool(_view, request, task))


# -- models --------------------------------------------------------------------------------------------------
def _version(model: str, max_prompt_chars: int) -> dict:
    schema = core.models()[model][1].model_json_schema()
    schema.pop("additionalProperties", None)
    for name in ("prompt", "negative_prompt"):  # the task service's limit on every text
        if name in schema["properties"]:
            core.limit_text(schema["properties"][name], max_prompt_chars)
    return {"id": core.version_id(model), "created_at": "2026-01-01T00:00:00Z", "cog_version": "0.9.0",
            "openapi_schema": {"openapi": "3.0.2", "info": {"title": model, "version": __version__},
                               "paths": {}, "components": {"schemas": {
                                   "Input": {**schema, "title": "Input"},
                                   "Output": {"type": "string", "format": "uri", "title": "Output"}}}}}


def _known(owner: str, name: str) -> str:
    model = f"{owner}/{name}"
    if model not in core.models():
        raise ApiError(404, "not_found", f"no model {model}; this server runs meta/musicgen, sepal/audiogen and "
                                         "soundry/<model>")
    return model


@router.get("/models/{owner}/{name}", summary="A model and its latest version", responses=_docs(ModelView, 200, 404))
@problems
async def get_model(request: Request, owner: str, name: str):
    await caller(request)
    model = _known(owner, name)
    family = core.models()[model][0]
    return JSONResponse({"url": f"{link_base(request).rstrip('/')}/v1/models/{model}", "owner": owner, "name": name,
                         "description": f"{model} served by soundry ({family})", "visibility": "public",
                         "github_url": None, "paper_url": None, "license_url": None, "run_count": 0,
                         "cover_image_url": None, "default_example": None,
                         "latest_version": _version(model, services(request).settings.max_prompt_chars)})


@router.get("/models/{owner}/{name}/versions", summary="A model's versions (one)",
            responses=_docs(VersionPage, 200, 404))
@problems
async def list_versions(request: Request, owner: str, name: str):
    await caller(request)
    return JSONResponse({"next": None, "previous": None, "results": [_version(_known(owner, name),
                                                                          services(request).settings.max_prompt_chars)]})


@router.get("/models/{owner}/{name}/versions/{version}", summary="A model's version",
            responses=_docs(VersionView, 200, 404))
@problems
async def get_version(request: Request, owner: str, name: str, version: str):
    await caller(request)
    model = _known(owner, name)
    if version != core.version_id(model):
        raise ApiError(404, "not_found", f"no version {version} of {model}")
    return JSONResponse(_version(model, services(request).settings.max_prompt_chars))


# -- files ---------------------------------------------------------------------------------------------------
def file_view(request: Request, up: Upload) -> dict:
    return {"id": up.id, "name": up.filename or up.id, "content_type": "audio/flac", "size": up.size,
            "etag": up.id, "checksums": {}, "metadata": {}, "created_at": core.iso(up.created_at),
            "expires_at": core.iso(up.expires_at),
            "urls": {"get": f"{link_base(request).rstrip('/')}/v1/files/{up.id}"}}


@router.post("/files", status_code=201, summary="Upload a file to pass as an input (an upload)",
             description="multipart/form-data with an audio file in `content`: WAV, FLAC, Ogg (Vorbis or Opus) or "
                         "MP3, which libsndfile decodes (anything else is refused with 422 naming `content`); decoded "
                         "and kept as FLAC for `upload_retention_hours`, as POST /v1/uploads. Pass its `urls.get` as "
                         "`input_audio`.",
             responses=_docs(FileView, 201, 400, 413, 422, 503),
             openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {
                 "schema": {"type": "object", "required": ["content"], "properties": {
                     "content": {"type": "string", "format": "binary", "contentMediaType": "audio/*",
                                 "description": "the audio: WAV, FLAC, Ogg (Vorbis or Opus) or MP3"},
                     "metadata": {"type": "string", "description": "JSON; accepted, not kept"}}},
                 "encoding": {"content": {"contentType": "audio/wav, audio/x-wav, audio/flac, audio/ogg, audio/mpeg, "
                                                         "application/octet-stream"}}}}}})
@problems
async def create_file(request: Request):
    user = await caller(request)
    up = await receive_upload(request, user, "content")
    return JSONResponse(file_view(request, up), status_code=201)


def own_upload(request: Request, file_id: str, user: User) -> Upload:
    return services(request).tasks.own_upload(user, file_id, what="file")


@problems
async def get_file(request: Request, file_id: str):
    """``GET /v1/files/{id}`` without a signature (``soundry.api.files`` sends it here)."""
    user = await caller(request)
    return JSONResponse(file_view(request, await run_in_threadpool(own_upload, request, file_id, user)))


@router.delete("/files/{name}", status_code=204, summary="Delete a file now", responses=_docs(None, 204, 404))
@problems
async def delete_file(request: Request, name: str):
    user = await caller(request)
    await run_in_threadpool(services(request).tasks.delete_upload, user, name, "file")
    return Response(status_code=204)

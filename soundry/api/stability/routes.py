"""Stability's REST API for audio (``POST /v2beta/audio/stable-audio-2/text-to-audio``), answered by the Stable
Audio model the ``stability_model`` setting names: code written for Stability's API points its host at soundry
and sends a soundry API key as the Bearer token.

The request is Stability's multipart form (``prompt``, ``duration``, ``seed``, ``steps``, ``cfg_scale``,
``output_format`` mp3|wav, ``model``; the empty ``none`` file part its examples send is taken). ``Accept:
audio/*`` answers the audio itself with ``finish-reason`` and ``seed`` headers; ``Accept: application/json`` the
base64 JSON ``{"audio", "finish_reason", "seed"}``. Every request is an ordinary task of the caller (history,
limits, metrics). Errors come in Stability's shape ``{"id", "name", "errors": [...]}``, with the status every
soundry API gives that refusal (docs/refusals.md: 422 for a refused input, where Stability answers 400).
"""

from __future__ import annotations

import base64
import uuid
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from soundry.api.http.auth import bearer_user, services
from soundry.api.http.envelope import ApiError
from soundry.api.http.live import task_end
from soundry.api.http.multipart import read_form
from soundry.service.configs import NON_BLANK_PATTERN
from soundry.service.errors import ServiceError, invalid
from soundry.service.tasks import TaskSpec

router = APIRouter(prefix="/v2beta", tags=["Stability compatibility"])
MAX_FORM = 64 * 1024  # a prompt and a few numbers
NAMES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 408: "request_timeout",
         409: "conflict", 413: "payload_too_large", 422: "invalid_request", 429: "rate_limit_exceeded",
         500: "internal_error", 503: "service_unavailable"}
# The service's names of the fields → Stability's (a refusal names the field the caller sent)
FIELDS = {"configs.cfg_coef": "cfg_scale", "configs.model": "model"}
MEDIA = {"mp3": "audio/mpeg", "wav": "audio/wav"}


class StabilityError(BaseModel):
    id: str = Field(description="32 hex digits")
    name: str = Field(examples=["invalid_request"])
    errors: list[str] = Field(examples=[["duration: Input should be less than or equal to 190"]])


class TextToAudio(BaseModel):
    """Stability's text-to-audio form (``none``: the empty file part of Stability's own examples)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., min_length=1, max_length=10000, pattern=NON_BLANK_PATTERN)
    duration: float | None = Field(None, gt=0, le=190, allow_inf_nan=False, description=(
        "seconds (Stability: 1 to 190); default: the longest the model makes, at most max_duration"))
    seed: int = Field(0, ge=0, le=4294967294, description="0: a random seed (answered in the seed header)")
    steps: int | None = Field(None, ge=1, le=500, description="default: the model's")
    cfg_scale: float | None = Field(None, ge=0, le=25, allow_inf_nan=False, description="default: the model's")
    output_format: Literal["mp3", "wav"] = "mp3"
    model: str | None = Field(None, max_length=64, description=(
        "stable-audio-2 / stable-audio-2.5: the model the stability_model setting names; or a soundry Stable "
        "Audio model's name"))
    none: str | None = None


def _error(exc: ServiceError) -> JSONResponse:
    text = exc.description if isinstance(exc, ApiError) or not exc.field else exc.described(
        lambda f: FIELDS.get(f, f.removeprefix("configs.")))
    return JSONResponse({"id": uuid.uuid4().hex, "name": NAMES.get(exc.status, "error"), "errors": [text]},
                        status_code=exc.status, headers=exc.headers)


def _model(svc, asked: str | None) -> str:
    if asked is None or asked.startswith("stable-audio-2"):  # Stability's own models: the configured one
        return svc.settings.stability_model
    spec = svc.catalog.find(asked)
    if spec is None or spec.kind != "diffusion":
        raise invalid("model", f"{asked!r} is not a Stable Audio model here; send stable-audio-2.5 (the server's "
                               f"{svc.settings.stability_model}) or one of its Stable Audio models")
    return spec.name


def translate(svc, form: TextToAudio) -> TaskSpec:
    name = _model(svc, form.model)
    spec = svc.catalog.find(name)
    if spec is None:
        raise ServiceError(503, "unavailable", f"the server's stability_model setting names no model here "
                                               f"({name!r})", {"Retry-After": "60"})
    duration = form.duration if form.duration is not None else min(spec.context, svc.settings.max_duration)
    configs = {"model": name, "duration": duration, "output_format": form.output_format}
    if form.seed:
        configs["seed"] = form.seed
    if form.steps is not None:
        configs["steps"] = form.steps
    if form.cfg_scale is not None:
        configs["cfg_coef"] = form.cfg_scale
    return TaskSpec(form.prompt, configs=configs)


@router.post("/audio/stable-audio-2/text-to-audio", summary="Stability-compatible text to audio",
             description="Stability's form; `Accept: audio/*` answers the audio, `application/json` base64 JSON. "
                         "Authenticate with `Authorization: Bearer <soundry API key>`.",
             responses={200: {"content": {"audio/mpeg": {}, "audio/wav": {}, "application/json": {"schema": {
                 "type": "object", "properties": {"audio": {"type": "string"}, "finish_reason": {"type": "string"},
                                                  "seed": {"type": "integer"}}}}}},
                        204: {"description": "the client left before the audio existed (the task is canceled)"},
                        **{c: {"model": StabilityError} for c in (400, 401, 413, 422, 429, 500, 503)}},
             openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {
                 "schema": TextToAudio.model_json_schema(ref_template="#/components/schemas/{model}")}}}})
async def text_to_audio(request: Request):
    try:
        return await _generate(request)
    except ServiceError as exc:
        return _error(exc)


async def _generate(request: Request):
    svc = services(request)
    user = await bearer_user(request, hint="send 'Authorization: Bearer <soundry API key>'")
    too_big = ApiError(413, "payload_too_large", f"the form is over {MAX_FORM} bytes; a prompt needs a few hundred")
    form = await read_form(request, MAX_FORM, too_big, "the request (Stability's form)", max_files=1, max_fields=16)
    try:
        fields = {k: v for k, v in form.multi_items() if not (k == "none" and not isinstance(v, str))}
    finally:
        await form.close()
    try:
        body = TextToAudio.model_validate(fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "body"
        message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        raise invalid(field, message) from None
    task = await svc.tasks.submit(user, translate(svc, body))
    done = await task_end(request, task.id)
    if done is None:  # the client left: nobody will take the audio
        await run_in_threadpool(svc.tasks.cancel_task, task.id)
        return Response(status_code=204)
    if done.status != "COMPLETED":
        raise ServiceError(500, "generation_failed", done.error or f"the task ended {done.status}")
    data = await run_in_threadpool(svc.storage.get, done.file_key)
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse({"audio": base64.b64encode(data).decode(), "finish_reason": "SUCCESS",
                             "seed": done.seed})
    return Response(data, media_type=MEDIA[body.output_format],
                    headers={"finish-reason": "SUCCESS", "seed": str(done.seed), "X-Soundry-Task-Id": done.id})

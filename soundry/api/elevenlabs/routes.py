"""``POST /v1/sound-generation``: ElevenLabs' sound-effects endpoint, answered by soundry's models.

Point an ElevenLabs client's ``base_url`` at soundry and use a soundry API key as the ``xi-api-key``
(``Authorization: Bearer`` works too). Each request is an ordinary soundry task (history, limits,
metrics); the answer is the audio itself, sent as it is generated (a loop, whose head changes once
its tail exists, and tasks of Celery workers on RabbitMQ are sent when complete). The task is
canceled when the client goes away first. Errors come in ElevenLabs' shape ``{"detail": {"status", "message"}}``.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import numpy as np
import soundfile as sf
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator
from starlette.concurrency import run_in_threadpool

from soundry.api.http.auth import services, user_for_credential
from soundry.api.http.body import parse_json_body
from soundry.api.http.envelope import ApiError
from soundry.api.http.live import first_audio, task_end
from soundry.audio.chunk_encode import OUTPUT_FORMATS, ChunkEncoder, parse_output_format
from soundry.service.configs import NON_BLANK_PATTERN, check_prompt
from soundry.service.errors import ServiceError
from soundry.service.tasks import TaskSpec
from soundry.tasks.live_audio import AudioChannel
from soundry.tasks.models import Task, User

router = APIRouter(prefix="/v1", tags=["ElevenLabs compatibility"])

DEFAULT_DURATION = 5.0  # seconds, when duration_seconds is null (ElevenLabs guesses one from the prompt)
DEFAULT_PROMPT_INFLUENCE = 0.3  # ElevenLabs' default


def cfg_coef_for(prompt_influence: float) -> float:
    """prompt_influence 0..1 → classifier-free guidance 1..7.67: 1 + 20/3 · p, so ElevenLabs' default
    0.3 gives soundry's default guidance 3.0 and 0 means no guidance (the conditional model alone)."""
    return 1.0 + 20.0 / 3.0 * prompt_influence


class SoundGeneration(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{
        "text": "glass shattering on a tiled floor", "duration_seconds": 2.0, "prompt_influence": 0.3}]})

    text: str = Field(..., min_length=1, description="what to generate",
                      json_schema_extra={"pattern": NON_BLANK_PATTERN})
    duration_seconds: float | None = Field(None, ge=0.5, le=30.0, allow_inf_nan=False,
                                           description=f"0.5 to 30; null means {DEFAULT_DURATION:g} s")
    prompt_influence: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False, description=(
        f"0 to 1 (null: {DEFAULT_PROMPT_INFLUENCE}); guidance = 1 + 20/3 × prompt_influence"))
    loop: StrictBool | None = Field(None, description="a clip that loops seamlessly")
    model_id: str | None = Field(None, max_length=64, description=(
        "ElevenLabs' ids (eleven_text_to_sound_*) use soundry's default model; soundry model names are accepted"))

    @field_validator("text")
    @classmethod
    def _visible_text(cls, v: str) -> str:
        return check_prompt(v, "text")


class ElevenLabsError(BaseModel):
    detail: dict[str, str] = Field(examples=[{"status": "invalid_request", "message": "duration_seconds: …"}])


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": {"status": code, "message": message}}, status_code=status, headers=headers)


async def _user(request: Request) -> User:
    key = request.headers.get("xi-api-key", "").strip()
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    if not key and scheme.lower() == "bearer":
        key = credential.strip()
    if not key:
        raise ApiError(401, "invalid_api_key", "send a soundry API key in the xi-api-key header")
    return await user_for_credential(request, key, "invalid_api_key")  # refusals count, as on every route


def _model(model_id: str | None, default: str) -> str:
    """ElevenLabs' ids mean soundry's default model; anything else is a soundry model name (the service checks
    it: an unknown one is refused naming ``model_id``)."""
    if model_id is None or model_id.startswith("eleven_text_to_sound"):
        return default
    return model_id


# The service's names of the fields → ElevenLabs' (a refusal names the field the caller sent)
FIELDS = {"prompt": "text", "configs.duration": "duration_seconds", "configs.cfg_coef": "prompt_influence",
          "configs.model": "model_id", "configs.loop": "loop"}


def _field(name: str | None) -> str:
    return FIELDS.get(name, name.removeprefix("configs.")) if name else ""


def _answer(exc: ServiceError) -> JSONResponse:
    """A refusal in ElevenLabs' shape, with the status every API gives it."""
    return _error(exc.status, exc.code if exc.status != 422 else "invalid_request", exc.described(_field),
                  exc.headers)


@router.post("/sound-generation", summary="ElevenLabs-compatible sound effects (the answer is the audio)",
             description="ElevenLabs' `text`, `duration_seconds`, `prompt_influence`, `loop`, `model_id`, and "
                         "`output_format` in the query string. Authenticate with `xi-api-key: <soundry API key>` "
                         "or `Authorization: Bearer`. See the README section for ElevenLabs users.",
             responses={200: {"content": {f.media_type: {} for f in OUTPUT_FORMATS.values()}},
                        **{c: {"model": ElevenLabsError} for c in (400, 401, 409, 413, 422, 429, 500, 503)}},
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": SoundGeneration.model_json_schema(ref_template="#/components/schemas/{model}")}}}})
async def sound_generation(request: Request, output_format: str = Query("mp3_44100_128", max_length=32),
                           enable_logging: bool | None = Query(None, description="accepted and ignored")):
    try:
        return await _generate(request, output_format)
    except ServiceError as exc:
        return _answer(exc)


async def _generate(request: Request, output_format: str):
    svc = services(request)
    user = await _user(request)
    try:
        fmt = parse_output_format(output_format)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", f"output_format: {exc}") from None
    body = await parse_json_body(request, SoundGeneration)
    influence = DEFAULT_PROMPT_INFLUENCE if body.prompt_influence is None else body.prompt_influence
    loop = bool(body.loop)
    spec = TaskSpec(body.text, configs={
        "model": _model(body.model_id, svc.settings.default_model),
        "duration": DEFAULT_DURATION if body.duration_seconds is None else body.duration_seconds,
        "cfg_coef": round(cfg_coef_for(influence), 6), "output_format": "flac", "normalization": "none",
        "loop": loop})
    task = await svc.tasks.submit(user, spec)
    headers = {"X-Soundry-Task-Id": task.id, "Cache-Control": "no-cache"}
    if not loop:
        channel = await first_audio(request, task.id)
        if channel is not None:
            return StreamingResponse(_live(request, task.id, channel, fmt), media_type=fmt.media_type, headers=headers)
    done = await task_end(request, task.id)
    if done is None:  # the client left
        await run_in_threadpool(svc.tasks.cancel_task, task.id)
        return Response(status_code=204)
    if done.status == "COMPLETED":
        audio, rate = await run_in_threadpool(_stored_audio, svc, done)
        enc = ChunkEncoder(fmt, rate, audio.shape[-1])
        data = enc.header() + await run_in_threadpool(enc.push, audio, True)
        return Response(data, media_type=fmt.media_type, headers=headers)
    if done.status == "CANCELED":
        raise ApiError(409, "canceled", f"task {done.id} was canceled")
    unavailable = "could not be loaded" in done.error
    raise ApiError(503 if unavailable else 500, "generation_failed", done.error or "generation failed")


async def _live(request: Request, task_id: str, channel: AudioChannel, fmt) -> AsyncIterator[bytes]:
    """The encoded live audio; a stream that ends early is completed from the stored file."""
    svc = services(request)
    enc = ChunkEncoder(fmt, channel.sample_rate, channel.total_samples)
    try:
        yield enc.header()
        async for chunk in channel.audio():
            yield enc.push(chunk)
        if not channel.complete:
            done = await task_end(request, task_id)
            if done is None or done.status != "COMPLETED":
                return  # the answer stops short; the task's history says why
            audio, _ = await run_in_threadpool(_stored_audio, svc, done)
            yield enc.push(audio[:, channel.samples:])
        yield enc.finish()
    except (GeneratorExit, asyncio.CancelledError):  # the client went away before the end: stop generating
        if not channel.complete:
            svc.tasks.cancel_task(task_id)
        raise


def _stored_audio(svc, task: Task) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(io.BytesIO(svc.storage.get(task.file_key)), dtype="float32", always_2d=True)
    return audio.T, rate

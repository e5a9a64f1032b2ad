"""Models, task creation, results, cancel and downloads."""

from __future__ import annotations

import asyncio
import json
import os

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from soundry.api.body import read_bounded_body
from soundry.api.deps import current_user, services
from soundry.api.docs_models import AiModels, ModelEntry, TaskCreated, TaskResult, answers
from soundry.api.envelope import ApiError, ok
from soundry.api.routes_uploads import check_task_inputs, decoders
from soundry.api.schemas import CreateTask
from soundry.api.streams import EventStreams
from soundry.api.tasks_view import public_config, task_result
from soundry.models.registry import ALIASES, MODEL_NAMES, SPECS
from soundry.signing import verify
from soundry.tasks.models import Task, User
from soundry.tasks.webhook_target import WebhookRefused, resolve_target

router = APIRouter(prefix="/v1", tags=["audio generation"])
MAX_BODY = 1 << 20
RESOLVE_WAIT = 5.0  # seconds a webhook's host may take to resolve when a task is created


def _model_metadata(name: str, loaded: dict) -> dict:
    spec = SPECS[ALIASES.get(name, name)]
    engine = loaded.get(spec.name)
    return {"name": spec.name, "hub_repo": spec.hub_repo, "family": spec.family, "description": spec.description,
            "sample_rate": 16000 if spec.family == "audiogen" else 32000, "channels": spec.channels,
            # an added model (soundry models add): where it comes from; its licence is its card's (models list)
            "license": None if spec.source else "CC-BY-NC-4.0", "source": spec.source or None,
            "adapter": spec.adapter or None, "loaded": engine is not None,
            # what the loaded model runs in; null until loaded here (or when Celery workers serve it)
            "melody": spec.melody, "decoders": decoders(spec),
            "precision": engine.model.precision if engine is not None else None,
            "compiled": engine.compile_state if engine is not None else None,
            "weights": engine.model.weights if engine is not None else None}


@router.get("/models/audio_generation", summary="Models with their metadata", responses=answers(list[ModelEntry]),
            description="`metadata.precision` is the precision the model runs in once this server has loaded it "
                        "(fp32, bf16, fp16 or int8); `metadata.compiled` says whether its decode step is compiled "
                        "(`off`, `compiling`, `on`, `failed`); `metadata.weights` how its linear weights are "
                        "held (`packed`: oneDNN's CPU layout, `int8`, `plain`). All three are null for models not "
                        "loaded in this process. `metadata.melody` says whether the model follows a tune "
                        "(`configs.melody`); `metadata.decoders` the values `configs.decoder` takes for it.")
def models(request: Request):
    engines = services(request).engines
    loaded = engines.loaded() if engines is not None else {}
    return ok(request, [{"model": n, "metadata": _model_metadata(n, loaded)} for n in MODEL_NAMES])


@router.get("/ai/models", summary="Model names and types", responses=answers(AiModels))
def ai_models(request: Request):
    return ok(request, {"models": [{"model": n, "type": "audio-generation-model"} for n in MODEL_NAMES]})


@router.post("/ai/audio_generation", status_code=201, summary="Create a text-to-audio task",
             responses=answers(TaskCreated, 201, 400, 401, 404, 413, 422, 429, 503))  # body: see soundry.api.openapi
async def create_task(request: Request, user: User = Depends(current_user)):
    svc = services(request)
    req = await parse_json_body(request, CreateTask)
    limit = svc.settings.max_prompt_chars
    for name in ("prompt", "negative_prompt"):
        text = getattr(req, name)
        if len(text) > limit:
            raise ApiError(413, f"{name}_too_long", f"{name} has {len(text)} characters; the limit is {limit}")
    if req.configs.duration > svc.settings.max_duration:
        raise ApiError(422, "invalid_config", f"configs.duration: at most {svc.settings.max_duration:g} seconds")
    if req.webhook:
        await _check_webhook(req.webhook, svc.settings.webhook_networks())
    # The database and the broker block: they run on the thread pool, never on the event loop.
    task = await run_in_threadpool(_store_and_enqueue, svc, user, req)
    return ok(request, {"task_id": task.id, "prompt": task.prompt, "negative_prompt": task.negative_prompt,
                        "config": public_config(task)}, status_code=201)


def _store_and_enqueue(svc, user: User, req: CreateTask) -> Task:
    cfg = req.configs
    check_task_inputs(svc, user, cfg)
    task = svc.limits.create_task(Task(user_id=user.id, prompt=req.prompt, negative_prompt=req.negative_prompt,
                                       config=cfg.model_dump(), model=cfg.model, webhook=req.webhook or ""))
    svc.queue.enqueue(task.id, task.model)
    return task


async def parse_json_body(request: Request, model: type[BaseModel]) -> BaseModel:
    """The request's JSON body validated as ``model``: 413 when too big, 400 when not JSON, 422 naming the field."""
    raw = await _read_body(request)
    try:
        body = json.loads(raw or b"null")
    except ValueError as exc:  # syntax, encoding, or an integer of more than 4,300 digits
        raise ApiError(400, "invalid_json", f"malformed JSON body: {exc}") from None
    except RecursionError:  # e.g. 100,000 '[': the parser gives up on the nesting
        raise ApiError(400, "invalid_json", "malformed JSON body: nested too deeply") from None
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _validation_error(exc) from None


async def _read_body(request: Request) -> bytes:
    """The body, refused with 413 as soon as it passes MAX_BODY (declared or streamed)."""
    too_big = ApiError(413, "payload_too_large", f"request body over {MAX_BODY} bytes; a task needs a few hundred")
    return await read_bounded_body(request, MAX_BODY, too_big)


async def _check_webhook(url: str, allowed: list) -> None:
    """422 unless the webhook's host resolves to addresses it may reach (public, or operator-allowed)."""
    try:
        await asyncio.wait_for(run_in_threadpool(resolve_target, url, allowed), RESOLVE_WAIT)
    except WebhookRefused as exc:
        raise ApiError(422, "invalid_request", f"webhook: {exc}") from None
    except TimeoutError:
        raise ApiError(422, "invalid_request", f"webhook: its host did not resolve within {RESOLVE_WAIT:g} s") from None


def _validation_error(exc: ValidationError) -> ApiError:
    parts, code = [], "invalid_request"
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if loc.startswith("configs"):
            code = "invalid_config"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{loc or 'body'}: {msg}")
    return ApiError(422, code, "; ".join(parts))


def _own_task(request: Request, task_id: str, user: User) -> Task:
    task = services(request).store.get(task_id, user.id) if len(task_id) <= 64 else None
    if task is None:
        raise ApiError(404, "not_found", f"no task {task_id} for this user")
    return task


@router.get("/ai/audio_generation/{task_id}", summary="A task's state and result",
            responses=answers(TaskResult, 200, 401, 404, 429))
def get_task(request: Request, task_id: str, user: User = Depends(current_user)):
    return ok(request, task_result(request, _own_task(request, task_id, user)))


@router.get("/ai/audio_generation/{task_id}/events", response_class=StreamingResponse,
            summary="Live progress as Server-Sent Events",
            description="`event: status` with the task's result object (as in GET …/{task_id}, `data.data`) "
                        "whenever status, percent or queue position change, then `event: done` with the final "
                        "object, and the stream ends. A comment line every 15 s keeps proxies from closing it. "
                        "A stream lives at most `event_stream_seconds` (default 30 min), then ends with "
                        "`event: expired`: reconnect. Open streams are capped per user (429) and in all (503).",
            responses={**answers(None, 200, 401, 404, 429, 503), 200: {"content": {"text/event-stream": {
                "example": 'event: status\ndata: {"task_id": "…", "status": "PROCESSING", "percent": 40, …}\n\n'}}}})
async def task_events(request: Request, task_id: str, user: User = Depends(current_user)):
    task = await run_in_threadpool(_own_task, request, task_id, user)
    streams: EventStreams = request.app.state.event_streams
    store = services(request).store
    streams.reserve(user.id)
    return streams.response(request, user.id, lambda: task_result(request, store.get(task.id))["data"])


@router.post("/ai/audio_generation/{task_id}/cancel", summary="Cancel a task that has not finished",
             responses=answers(TaskResult, 200, 401, 404, 409, 429))
def cancel_task(request: Request, task_id: str, user: User = Depends(current_user)):
    svc = services(request)
    task = _own_task(request, task_id, user)
    if not svc.store.cancel(task.id):
        raise ApiError(409, "already_finished", f"task {task.id} is already {task.status}")
    svc.queue.cancel(task.id)
    if svc.webhooks is not None:
        svc.webhooks.notify(task.id, "CANCELED")
    return ok(request, task_result(request, svc.store.get(task.id)))


@router.get("/files/{name}", summary="Download a finished task's audio (signed link, no auth header)",
            description="With `expires` and `sig`: the audio. Without both, with an Authorization header: "
                        "Replicate's `files.get` (the file object of an upload, or a problem-details error).",
            responses={**answers(None, 200, 403, 404, 410, 422), 200: {"content": {
                "audio/wav": {}, "audio/flac": {}, "audio/ogg": {}, "audio/mpeg": {}, "application/json": {
                    "schema": {"$ref": "#/components/schemas/FileView"}}}},
                **{c: {"description": "an error (Replicate's problem details when unsigned)", "content": {
                    "application/json": {"schema": {"anyOf": [{"$ref": "#/components/schemas/ErrorEnvelope"},
                                                              {"$ref": "#/components/schemas/Problem"}]}}}}
                   for c in (401, 404, 429)}},
            response_class=FileResponse)
async def download(request: Request, name: str, expires: int | None = Query(None),
                   sig: str | None = Query(None, max_length=128)):
    if expires is None and sig is None:
        from soundry.api.routes_replicate import get_file

        return await get_file(request, name)
    if expires is None or sig is None:
        raise ApiError(422, "invalid_request", "a signed link has both expires and sig")
    return await run_in_threadpool(_download, request, name, expires, sig)


def _download(request: Request, name: str, expires: int, sig: str):
    svc = services(request)
    task_id, _, ext = name.partition(".")
    reason = verify(svc.settings.secret, task_id, ext, expires, sig)
    if reason:
        raise ApiError(403, "forbidden", reason)
    task = svc.store.get(task_id)
    if task is None or task.status != "COMPLETED" or task.file_format != ext:
        raise ApiError(404, "not_found", "no such file")
    return stored_file_response(svc, task)


def stored_file_response(svc, task: Task):
    """A COMPLETED task's stored audio file as the answer; 410 when the file is no longer stored
    (deleted by an operator or a retention rule). Blocking (it looks the file up): call it on the thread pool."""
    from soundry.audio.encode import FORMATS

    ext = task.file_format
    media = next((v[2] for v in FORMATS.values() if v[3] == ext), "application/octet-stream")
    path = svc.storage.local_path(task.file_key)
    filename = f"soundry-{task.id}.{ext}"
    gone = ApiError(410, "gone", f"the audio of task {task.id} is no longer stored; create the task again")
    if path is not None:
        try:
            stat = os.stat(path)  # given to FileResponse, which then does not look again
        except OSError:
            raise gone from None
        return FileResponse(path, media_type=media, filename=filename, stat_result=stat)
    if not task.file_key or not svc.storage.exists(task.file_key):
        raise gone
    return StreamingResponse(svc.storage.iter_chunks(task.file_key), media_type=media,
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})

"""FlexStack's task routes: models, create, result, live progress, cancel, and signed downloads — each a
translation over the task service."""

from __future__ import annotations

import os

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from soundry.api.flexstack.schemas import CreateTask
from soundry.api.flexstack.views import public_config, task_result
from soundry.api.http.auth import current_user, services
from soundry.api.http.body import parse_json_body
from soundry.api.http.docs import AiModels, ModelEntry, TaskCreated, TaskResult, answers
from soundry.api.http.envelope import ApiError, ok
from soundry.api.http.streams import EventStreams
from soundry.service.tasks import TaskSpec
from soundry.signing import verify
from soundry.tasks.models import Task, User

router = APIRouter(prefix="/v1", tags=["audio generation"])


def _model_metadata(spec, loaded: dict) -> dict:
    engine = loaded.get(spec.name)
    return {**spec.capabilities(), "loaded": engine is not None,
            # what the loaded model runs in; null until loaded here (or when Celery workers serve it)
            "precision": engine.model.precision if engine is not None else None,
            "compiled": engine.compile_state if engine is not None else None,
            "weights": engine.model.weights if engine is not None else None}


@router.get("/models/audio_generation", summary="Models with their metadata", responses=answers(list[ModelEntry]),
            description="`metadata.precision` is the precision the model runs in once this server has loaded it "
                        "(fp32, bf16, fp16 or int8); `metadata.compiled` says whether its decode step is compiled "
                        "(`off`, `compiling`, `on`, `failed`); `metadata.weights` how its linear weights are "
                        "held (`rows`: soundry's CPU kernel, `packed`: oneDNN's CPU layout, `int8`, `plain`). All "
                        "three are null for models not "
                        "loaded in this process. `metadata.melody` says whether the model follows a tune "
                        "(`configs.melody`); `metadata.decoders` the values `configs.decoder` takes for it.")
def models(request: Request):
    svc = services(request)
    loaded = svc.engines.loaded() if svc.engines is not None else {}
    catalog = svc.catalog
    return ok(request, [{"model": n, "metadata": _model_metadata(catalog.get(n), loaded)} for n in catalog.names()])


@router.get("/ai/models", summary="Model names and types", responses=answers(AiModels))
def ai_models(request: Request):
    names = services(request).catalog.names()
    return ok(request, {"models": [{"model": n, "type": "audio-generation-model"} for n in names]})


@router.post("/ai/audio_generation", status_code=201, summary="Create a text-to-audio task",
             responses=answers(TaskCreated, 201, 400, 401, 404, 413, 422, 429, 503))  # body: http.openapi
async def create_task(request: Request, user: User = Depends(current_user)):
    req = await parse_json_body(request, CreateTask)
    spec = TaskSpec(req.prompt, req.negative_prompt, req.configs, req.webhook or "")
    task = await services(request).tasks.submit(user, spec)
    return ok(request, {"task_id": task.id, "prompt": task.prompt, "negative_prompt": task.negative_prompt,
                        "config": public_config(task)}, status_code=201)


def _own_task(request: Request, task_id: str, user: User) -> Task:
    return services(request).tasks.own_task(user, task_id)


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
    task, canceled = services(request).tasks.cancel(user, task_id)
    if not canceled:
        raise ApiError(409, "already_finished", f"task {task.id} is already {task.status}")
    return ok(request, task_result(request, task))


def signed_download(request: Request, name: str, expires: int, sig: str):
    """A finished task's file by its signed link (blocking: call it on the thread pool)."""
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

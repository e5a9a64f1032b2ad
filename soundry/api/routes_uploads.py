"""Audio uploads (``POST /v1/uploads``) to continue from, and the ``configs.input_audio`` check."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from soundry.api.body import read_bounded_body
from soundry.api.deps import current_user, services
from soundry.api.docs_models import answers
from soundry.api.envelope import ApiError, ok
from soundry.audio.decode import UndecodableAudio
from soundry.models.registry import ALIASES, FAMILY_WINDOWS, SPECS
from soundry.storage import StorageError
from soundry.tasks.models import Upload, User

router = APIRouter(prefix="/v1", tags=["uploads"])
_MULTIPART_OVERHEAD = 64 * 1024  # boundary lines and part headers around the file


class UploadInfo(BaseModel):
    id: str
    filename: str
    duration: float
    sample_rate: int
    channels: int
    size: int
    created_at: str
    expires_at: str


def _view(up: Upload) -> dict:
    return {"id": up.id, "filename": up.filename, "duration": round(up.duration, 6), "sample_rate": up.sample_rate,
            "channels": up.channels, "size": up.size, "created_at": up.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            "expires_at": up.expires_at.strftime("%Y-%m-%d %H:%M:%S")}


@router.post("/uploads", status_code=201, summary="Upload an audio clip to continue from",
             description="multipart/form-data with one file field `file` (wav, flac, ogg or mp3). The clip is "
                         "decoded and kept for `upload_retention_hours`; pass its `id` as `configs.input_audio`.",
             responses=answers(UploadInfo, 201, 400, 401, 413, 422, 429, 503),
             openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                 "type": "object", "required": ["file"],
                 "properties": {"file": {"type": "string", "format": "binary"}}}}}}})
async def create_upload(request: Request, user: User = Depends(current_user)):
    svc = services(request)
    s = svc.settings
    data, filename = await _read_file_field(request, s.max_upload_bytes)
    if await run_in_threadpool(svc.uploads.count, user.id) >= s.max_uploads_per_user:
        raise ApiError(429, "too_many_uploads", f"you have {s.max_uploads_per_user} uploads; delete some "
                                                "(DELETE /v1/uploads/{id}) or wait for them to expire")
    try:
        up = await run_in_threadpool(svc.uploads.create, user.id, filename, data, s.max_upload_seconds)
    except UndecodableAudio as exc:
        raise ApiError(422, "invalid_audio", f"file: {exc}") from None
    except StorageError:
        raise ApiError(503, "storage_unavailable", "the upload could not be stored; try again later") from None
    return ok(request, _view(up), status_code=201)


@router.get("/uploads/{upload_id}", summary="An upload's facts", responses=answers(UploadInfo, 200, 401, 404, 429))
def get_upload(request: Request, upload_id: str, user: User = Depends(current_user)):
    return ok(request, _view(_own_upload(request, upload_id, user)))


@router.delete("/uploads/{upload_id}", summary="Delete an upload now",
               responses=answers(UploadInfo, 200, 401, 404, 429))
def delete_upload(request: Request, upload_id: str, user: User = Depends(current_user)):
    up = _own_upload(request, upload_id, user)
    services(request).uploads.delete(up.id, user.id)
    return ok(request, _view(up))


def _own_upload(request: Request, upload_id: str, user: User) -> Upload:
    up = services(request).uploads.get(upload_id, user.id)
    if up is None:
        raise ApiError(404, "not_found", f"no upload {upload_id} for this user")
    return up


async def _read_file_field(request: Request, max_bytes: int) -> tuple[bytes, str]:
    """The ``file`` part of a multipart body, refusing bodies over the limit while they stream in
    (Starlette would otherwise spool any size to disk before we could look)."""
    from starlette.requests import Request as StarletteRequest

    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, "bad_request", "send the clip as multipart/form-data with a file field named 'file'")
    limit = max_bytes + _MULTIPART_OVERHEAD
    too_big = ApiError(413, "payload_too_large", f"uploads are limited to {max_bytes // (1 << 20)} MiB")
    body = await read_bounded_body(request, limit, too_big)

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await StarletteRequest(request.scope, replay).form(max_files=1, max_fields=8)
    except Exception as exc:  # malformed multipart, too many parts
        raise ApiError(400, "bad_request", f"malformed multipart body: {exc}") from None
    field = form.get("file")
    if field is None or isinstance(field, str):
        raise ApiError(400, "bad_request", "the multipart body has no file field named 'file'")
    data = await field.read()
    if len(data) > max_bytes:
        raise too_big
    return data, field.filename or ""


def check_input_audio(svc, user: User, cfg) -> None:
    """Refuse (404/422, naming the field) a ``configs.input_audio`` the task could not use."""
    if cfg.input_audio is None:
        if cfg.continuation_start or cfg.continuation_end is not None:
            raise ApiError(422, "invalid_config", "configs.continuation_start/end need configs.input_audio")
        return
    up = svc.uploads.get(cfg.input_audio, user.id)
    if up is None:
        raise ApiError(404, "not_found", f"configs.input_audio: no upload {cfg.input_audio} for this user")
    end = up.duration if cfg.continuation_end is None else cfg.continuation_end
    if end > up.duration + 1e-3:
        raise ApiError(422, "invalid_config", f"configs.continuation_end: the clip is {up.duration:.3f} s long")
    if cfg.continuation_start >= end:
        raise ApiError(422, "invalid_config", "configs.continuation_start must be before continuation_end")
    prompt = end - cfg.continuation_start
    context = FAMILY_WINDOWS[SPECS[ALIASES.get(cfg.model, cfg.model)].family][0]  # a prompt must be shorter
    if prompt >= min(cfg.duration, context):
        raise ApiError(422, "invalid_config",
                       f"configs.duration: the audio prompt is {prompt:.2f} s; the total duration must be longer "
                       f"and the prompt shorter than the model's {context:g} s context (use continuation_start/"
                       "continuation_end to take part of the clip)")

"""Audio uploads (``POST /v1/uploads``) to continue from or to follow as a melody, and the checks of a task's
configs against its model and its uploads (``check_task_inputs``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request as StarletteRequest
from starlette.types import Message

from soundry.api.deps import current_user, services
from soundry.api.docs_models import answers
from soundry.api.envelope import ApiError, ok
from soundry.api.schemas import check_prompt
from soundry.audio.decode import UndecodableAudio
from soundry.models.registry import ALIASES, FAMILY_WINDOWS, SPECS, ModelSpec
from soundry.storage import StorageError
from soundry.tasks.models import Upload, User
from soundry.tasks.uploads import DecodersBusy, TooManyUploads, too_many_uploads

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


_FORMATS = "WAV, FLAC, Ogg (Vorbis or Opus) or MP3"
_ENCODING = "audio/wav, audio/x-wav, audio/flac, audio/ogg, audio/mpeg, application/octet-stream"
_ANSWERS = {400: "not multipart/form-data, malformed, more than one file or 8 fields, or no field named `file`",
            413: "the body is larger than `max_upload_bytes` (20 MiB) plus the multipart overhead",
            422: f"`invalid_audio`: the file is not {_FORMATS} audio libsndfile can decode, or it is over "
                 "`max_upload_seconds` (120 s), over 2 channels, outside 8–192 kHz, empty or not finite",
            429: "`too_many_uploads`: the user keeps `max_uploads_per_user` (50) uploads; or the rate limit",
            503: "`busy`: every decode slot (`upload_decode_concurrency`) stayed taken; retry after `Retry-After` "
                 "seconds (also `storage_unavailable`, or the server is overloaded)"}


def _upload_answers() -> dict:
    out = answers(UploadInfo, 201, 401, *_ANSWERS)
    for code, text in _ANSWERS.items():
        out[code]["description"] = text
    return out


@router.post("/uploads", status_code=201, summary="Upload an audio clip to continue from or to follow as a melody",
             description=f"multipart/form-data with one file field `file`: {_FORMATS} (libsndfile decodes it; "
                         "anything else is refused with 422 `invalid_audio`). The clip is decoded and kept, as "
                         "FLAC, for `upload_retention_hours`; pass its `id` as `configs.input_audio` (to continue it) "
                         "or `configs.melody` (a tune for a melody model to follow).",
             responses=_upload_answers(),
             openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {
                 "schema": {"type": "object", "required": ["file"], "additionalProperties": False,
                            "properties": {"file": {"type": "string", "format": "binary",
                                                    "contentMediaType": "audio/*",
                                                    "description": f"the clip: {_FORMATS}"}}},
                 "encoding": {"file": {"contentType": _ENCODING}}}}}})
async def create_upload(request: Request, user: User = Depends(current_user)):
    return ok(request, _view(await receive_upload(request, user)), status_code=201)


async def receive_upload(request: Request, user: User, field_name: str = "file") -> Upload:
    """Read the multipart field ``field_name``, decode and keep it as the user's upload (the service on the
    thread pool); every refusal is an ApiError naming the field. Shared by /v1/uploads and Replicate's /v1/files."""
    svc = services(request)
    s = svc.settings
    if await run_in_threadpool(svc.uploads.count, user.id) >= s.max_uploads_per_user:  # early; create() decides
        raise ApiError(429, "too_many_uploads", too_many_uploads(s.max_uploads_per_user))
    form, field = await _read_file_field(request, s.max_upload_bytes, field_name)
    try:
        try:
            check_prompt(field.filename or "", "the file name", allow_blank=True)  # it is shown back, as text
        except ValueError as exc:
            raise ApiError(422, "invalid_request", f"{field_name}: {exc}") from None
        return await run_in_threadpool(svc.uploads.create, user.id, field.filename or "", field.file, field.size,
                                       s.max_upload_seconds, s.max_uploads_per_user)
    except UndecodableAudio as exc:
        raise ApiError(422, "invalid_audio", f"{field_name}: {exc}") from None
    except TooManyUploads as exc:
        raise ApiError(429, "too_many_uploads", str(exc)) from None
    except DecodersBusy as exc:
        raise ApiError(503, "busy", str(exc), {"Retry-After": "5"}) from None
    except StorageError:
        raise ApiError(503, "storage_unavailable", "the file could not be stored; try again later") from None
    finally:
        await form.close()


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


async def _read_file_field(request: Request, max_bytes: int, name: str = "file") -> tuple[FormData, UploadFile]:
    """The form and its file part ``name``, parsed as the body streams in: Starlette spools the file to a temporary
    file (past 1 MiB), and a body past the limit is refused (413) as soon as it passes it. The caller closes
    the form."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, "bad_request", f"send the clip as multipart/form-data with a file field named '{name}'")
    limit = max_bytes + _MULTIPART_OVERHEAD
    too_big = ApiError(413, "payload_too_large", f"uploads are limited to {max_bytes // (1 << 20)} MiB")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    received = 0

    async def bounded_receive() -> Message:
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise too_big
        return message

    try:
        form = await StarletteRequest(request.scope, bounded_receive).form(max_files=1, max_fields=8)
    except ApiError:
        raise
    except Exception as exc:  # malformed multipart, too many parts
        raise ApiError(400, "bad_request", f"malformed multipart body: {exc}") from None
    field = form.get(name)
    if field is None or isinstance(field, str):
        await form.close()
        raise ApiError(400, "bad_request", f"the multipart body has no file field named '{name}'")
    if (field.size or 0) > max_bytes:
        await form.close()
        raise too_big
    return form, field


def check_task_inputs(svc, user: User, cfg) -> None:
    """Refuse (404/422, naming the field) what a task's model cannot do with its configs (a melody, the MBD
    decoder) and a ``configs.input_audio`` or ``configs.melody`` the task could not use. Blocking (it reads the
    uploads): call it on the thread pool, before anything is stored."""
    spec = SPECS[ALIASES.get(cfg.model, cfg.model)]
    if cfg.decoder not in decoders(spec):
        raise ApiError(422, "invalid_config", f"configs.decoder: {cfg.model} is not a MusicGen model; MultiBand "
                                              "Diffusion decodes MusicGen's tokens only (use encodec)")
    if cfg.melody is not None:
        if not spec.melody:
            raise ApiError(422, "invalid_config", f"configs.melody: {cfg.model} is not conditioned on a melody; use "
                                                  f"one of {', '.join(melody_models())}")
        if cfg.input_audio is not None:
            raise ApiError(422, "invalid_config", "configs.melody: a melody and an audio prompt to continue "
                                                  "(configs.input_audio) cannot be combined")
        _own_upload_for(svc, user, "melody", cfg.melody)
    _check_input_audio(svc, user, cfg, spec.family)


def decoders(spec: ModelSpec) -> list[str]:
    """What can decode a model's tokens: its codec, and MultiBand Diffusion for MusicGen."""
    return ["encodec", "mbd"] if spec.family == "musicgen" else ["encodec"]


def melody_models() -> list[str]:
    """The registry's names of the models conditioned on a melody."""
    return [name for name, spec in SPECS.items() if spec.melody]


def _own_upload_for(svc, user: User, field: str, upload_id: str) -> Upload:
    up = svc.uploads.get(upload_id, user.id)
    if up is None:
        raise ApiError(404, "not_found", f"configs.{field}: no upload {upload_id} for this user")
    return up


def _check_input_audio(svc, user: User, cfg, family: str) -> None:
    if cfg.input_audio is None:
        if "continuation_start" in cfg.model_fields_set or cfg.continuation_end is not None:  # as the schema says
            raise ApiError(422, "invalid_config", "configs.continuation_start/end need configs.input_audio")
        return
    up = _own_upload_for(svc, user, "input_audio", cfg.input_audio)
    end = up.duration if cfg.continuation_end is None else cfg.continuation_end
    if end > up.duration + 1e-3:
        raise ApiError(422, "invalid_config", f"configs.continuation_end: the clip is {up.duration:.3f} s long")
    if cfg.continuation_start >= end:
        raise ApiError(422, "invalid_config", "configs.continuation_start must be before continuation_end")
    prompt = end - cfg.continuation_start
    context = FAMILY_WINDOWS[family][0]  # a prompt must be shorter
    if prompt >= min(cfg.duration, context):
        raise ApiError(422, "invalid_config",
                       f"configs.duration: the audio prompt is {prompt:.2f} s; the total duration must be longer "
                       f"and the prompt shorter than the model's {context:g} s context (use continuation_start/"
                       "continuation_end to take part of the clip)")

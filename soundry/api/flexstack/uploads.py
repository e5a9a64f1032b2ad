"""FlexStack's audio uploads (``POST /v1/uploads``) to continue from or to follow as a melody."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from soundry.api.http.auth import current_user, services
from soundry.api.http.docs import answers
from soundry.api.http.envelope import ok
from soundry.api.http.multipart import receive_upload
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
                                                    "description": f"the audio clip: {_FORMATS}"}}},
                 "encoding": {"file": {"contentType": _ENCODING}}}}}})
async def create_upload(request: Request, user: User = Depends(current_user)):
    return ok(request, _view(await receive_upload(request, user)), status_code=201)


@router.get("/uploads/{upload_id}", summary="An upload's facts", responses=answers(UploadInfo, 200, 401, 404, 429))
def get_upload(request: Request, upload_id: str, user: User = Depends(current_user)):
    return ok(request, _view(services(request).tasks.own_upload(user, upload_id)))


@router.delete("/uploads/{upload_id}", summary="Delete an upload now",
               responses=answers(UploadInfo, 200, 401, 404, 429))
def delete_upload(request: Request, upload_id: str, user: User = Depends(current_user)):
    return ok(request, _view(services(request).tasks.delete_upload(user, upload_id)))

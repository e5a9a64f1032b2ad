"""A multipart upload's file field, read as the body streams in with a size bound, and stored as the caller's
upload through the service (FlexStack's ``/v1/uploads`` and Replicate's ``/v1/files``)."""

from __future__ import annotations

import logging

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import FormParserError, MultiPartException
from starlette.requests import Request as StarletteRequest
from starlette.types import Message

from soundry.api.http.auth import services
from soundry.api.http.envelope import ApiError
from soundry.tasks.models import Upload, User

log = logging.getLogger(__name__)
_MULTIPART_OVERHEAD = 64 * 1024  # boundary lines and part headers around the file


async def receive_upload(request: Request, user: User, field_name: str = "file") -> Upload:
    """Read the multipart field ``field_name``, decode and keep it as the user's upload (the service on the
    thread pool); every refusal names the field. Shared by /v1/uploads and Replicate's /v1/files."""
    svc = services(request)
    await run_in_threadpool(svc.tasks.check_upload_room, user)  # early, before the body; store_upload decides
    form, field = await _read_file_field(request, svc.settings.max_upload_bytes, field_name)
    try:
        return await run_in_threadpool(svc.tasks.store_upload, user, field.filename or "", field.file, field.size,
                                       field_name)
    finally:
        await form.close()


async def read_form(request: Request, limit: int, too_big: ApiError, what: str, max_files: int = 1,
                    max_fields: int = 8) -> FormData:
    """A multipart (or urlencoded) form parsed as the body streams in: files are spooled to a temporary file (past
    1 MiB), and a body past ``limit`` bytes is refused (``too_big``) as soon as it passes it. The caller closes
    the form. ``what`` says what to send when the body is not a form."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise ApiError(400, "bad_request", f"send {what} as multipart/form-data")
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
        return await StarletteRequest(request.scope, bounded_receive).form(max_files=max_files, max_fields=max_fields)
    except (MultiPartException, FormParserError, ValueError) as exc:  # malformed multipart, too many parts
        raise ApiError(400, "bad_request", f"malformed multipart body: {exc}") from None
    except HTTPException as exc:  # Starlette's own answer to a malformed multipart body, in this API's shape
        raise ApiError(400, "bad_request", f"malformed multipart body: {exc.detail}") from None
    except OSError:  # spooling the file to disk failed (a full disk): the server's trouble, not the client's
        log.exception("spooling an upload failed")
        raise ApiError(503, "storage_unavailable", "the upload could not be received; try again later",
                       {"Retry-After": "30"}) from None


async def _read_file_field(request: Request, max_bytes: int, name: str = "file") -> tuple[FormData, UploadFile]:
    """The form and its file part ``name`` (``read_form``); a file over ``max_bytes`` is refused (413)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, "bad_request", f"send the clip as multipart/form-data with a file field named '{name}'")
    too_big = ApiError(413, "payload_too_large", f"uploads are limited to {max_bytes // (1 << 20)} MiB")
    form = await read_form(request, max_bytes + _MULTIPART_OVERHEAD, too_big, "the clip")
    field = form.get(name)
    if field is None or isinstance(field, str):
        await form.close()
        raise ApiError(400, "bad_request", f"the multipart body has no file field named '{name}'")
    if (field.size or 0) > max_bytes:
        await form.close()
        raise too_big
    return form, field

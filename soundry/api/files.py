"""``GET /v1/files/{name}``, a path two wire APIs share: with ``expires`` and ``sig`` it is FlexStack's signed
download of a finished task's audio; without both (and an Authorization header) Replicate's ``files.get``."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from soundry.api.flexstack.tasks import signed_download
from soundry.api.http.docs import answers
from soundry.api.http.envelope import ApiError
from soundry.api.replicate.routes import get_file

router = APIRouter(prefix="/v1", tags=["audio generation"])


@router.get("/files/{name}", summary="Download a finished task's audio (signed link, no auth header)",
            description="With `expires` and `sig`: the audio. Without both, with an Authorization header: "
                        "Replicate's `files.get` (the file object of an upload, or a problem-details error). "
                        "One of the two alone is a signed link that does not verify: 403, as a wrong `sig`.",
            responses={**answers(None, 200, 403, 404, 410, 422), 200: {"content": {
                "audio/wav": {}, "audio/flac": {}, "audio/ogg": {}, "audio/mpeg": {}, "application/json": {
                    "schema": {"$ref": "#/components/schemas/FileView"}}}},
                **{c: {"description": "an error (Replicate's problem details when unsigned)", "content": {
                    "application/json": {"schema": {"anyOf": [{"$ref": "#/components/schemas/ErrorEnvelope"},
                                                              {"$ref": "#/components/schemas/Problem"}]}}}}
                   for c in (401, 404, 429)}},
            response_class=FileResponse)
async def download(request: Request, name: str,
                   expires: int | None = Query(None, ge=0, le=2**63 - 1, description="the link's end, Unix time"),
                   sig: str | None = Query(None, max_length=128)):
    if expires is None and sig is None:
        return await get_file(request, name)
    if expires is None or sig is None:  # schema-valid (each is optional), a link that does not verify
        raise ApiError(403, "forbidden", "a signed link has both expires and sig; use the link as it was given")
    return await run_in_threadpool(signed_download, request, name, expires, sig)

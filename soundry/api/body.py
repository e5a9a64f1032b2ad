"""Reading a request body with a size bound (refused as soon as it passes the bound)."""

from __future__ import annotations

from fastapi import Request

from soundry.api.envelope import ApiError


async def read_bounded_body(request: Request, limit: int, too_big: ApiError) -> bytes:
    """The whole body, raising ``too_big`` when the declared length or the bytes streamed so far pass
    ``limit`` (nothing larger is ever held in memory or spooled to disk)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)

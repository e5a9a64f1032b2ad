"""Reading a request body with a size bound (refused as soon as it passes the bound), and a JSON body into a
wire API's request model (400 not JSON, 413 too big, 422 naming the field)."""

from __future__ import annotations

import json

from fastapi import Request
from pydantic import BaseModel, ValidationError

from soundry.api.http.envelope import ApiError

MAX_BODY = 1 << 20  # a JSON request; a task needs a few hundred bytes


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


def _validation_error(exc: ValidationError) -> ApiError:
    parts, code = [], "invalid_request"
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if loc.startswith("configs"):
            code = "invalid_config"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{loc or 'body'}: {msg}")
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "body"
    message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    return ApiError(422, code, "; ".join(parts), field=field, message=message)

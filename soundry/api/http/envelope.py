"""The response envelope of every JSON answer, and the errors that produce it."""

from __future__ import annotations

import datetime as dt
import time

from fastapi import Request
from fastapi.responses import JSONResponse

from soundry.service.errors import ServiceError


class ApiError(ServiceError):
    """A refusal by the HTTP layer itself (a body, a credential, a route): answered as the service's are."""


def _ts(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def envelope(request: Request, data=None, status: str = "success", errors: list[str] | None = None,
             description: str = "") -> dict:
    start = getattr(request.state, "start_time", None) or time.time()
    end = time.time()
    return {"data": data, "errors": errors or [], "error_description": description, "start_time": _ts(start),
            "end_time": _ts(end), "host_of_client_call_request": request.client.host if request.client else "",
            "total_time_by_second": round(end - start, 6), "status": status}


def ok(request: Request, data, status_code: int = 200) -> JSONResponse:
    return JSONResponse(envelope(request, data), status_code=status_code)


def error_response(request: Request, status: int, code: str, description: str,
                   headers: dict | None = None, data=None) -> JSONResponse:
    return JSONResponse(envelope(request, data, "error", [code], description), status_code=status, headers=headers)

"""How the API is served: uvicorn's settings, and a cap on requests in progress.

Every request gets an answer. The failure this prevents: uvicorn closed idle keep-alive
connections after 5 s, exactly httpx's own idle expiry (and less than nginx's 60 s), so a client
that reused a connection at the moment the server dropped it got "Server disconnected without
sending a response". The server's keep-alive (``keep_alive_seconds``, 75 s) now outlasts the
clients' and proxies', so they always close idle connections first. When more than
``max_concurrent_requests`` requests are in progress, the next ones are answered at once with 503
and ``Retry-After`` instead of queueing without bound. The listen backlog is large enough that
bursts wait in the kernel rather than being refused.
"""

from __future__ import annotations

import uvicorn
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from soundry.api.envelope import error_response
from soundry.config import Settings

BACKLOG = 4096
UNCOUNTED = ("/healthz", "/metrics")  # liveness must answer under load; long streams have their own caps
UNCOUNTED_SUFFIXES = ("/events", "/stream")


class ConcurrencyCap:
    """ASGI middleware: at most ``limit`` HTTP requests in progress (0 = no cap); over it, 503 with
    ``Retry-After`` in the envelope. Runs on the event loop only, so a plain counter is safe.
    (uvicorn's own ``limit_concurrency`` answers a bare-text 503 without ``Retry-After``, and counts
    long-lived streams, so it is not used.)"""

    def __init__(self, app: ASGIApp, limit: int, retry_after: int = 1):
        self.app, self.limit, self.retry_after, self.active = app, limit, retry_after, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not self.limit or path in UNCOUNTED or path.endswith(UNCOUNTED_SUFFIXES):
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            response = error_response(Request(scope), 503, "overloaded", f"the server has {self.active} requests "
                                      "in progress; retry after the time in Retry-After",
                                      {"Retry-After": str(self.retry_after)})
            await response(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


def uvicorn_config(app, settings: Settings, host: str, port: int, **overrides) -> uvicorn.Config:
    """The uvicorn settings of ``soundry serve`` (the tests serve with the same ones)."""
    options = dict(host=host, port=port, log_level="info", backlog=BACKLOG,
                   timeout_keep_alive=int(settings.keep_alive_seconds), proxy_headers=True,
                   forwarded_allow_ips=settings.forwarded_allow_ips)
    return uvicorn.Config(app, **{**options, **overrides})

"""How the API is served: uvicorn's settings, and a cap on requests in progress.

Every request gets an answer. The failure this prevents: uvicorn closed idle keep-alive
connections after 5 s, exactly httpx's own idle expiry (and less than nginx's 60 s), so a client
that reused a connection at the moment the server dropped it got "Server disconnected without
sending a response". The server's keep-alive (``keep_alive_seconds``, 75 s) now outlasts the
clients' and proxies', so they always close idle connections first. When more than
``max_concurrent_requests`` requests are in progress, the next ones are answered at once with 503
and ``Retry-After`` instead of queueing without bound. The listen backlog is large enough that
bursts wait in the kernel rather than being refused.

Slow clients cannot hold the server: a connection whose request head is not complete within
``header_timeout`` seconds of its first byte (or of the connection) is closed (slowloris), a request
whose body stalls for ``body_timeout`` seconds between chunks is answered 408 and its connection
closed, and one client address has at most ``max_unauthenticated_requests_per_address`` requests
in progress that have not yet been authenticated (429 beyond), so it cannot take the global budget.
Per-address caps count an IPv6 client by its /64 (``address_group``).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import threading
from collections import Counter

import uvicorn
from starlette.requests import HTTPConnection, Request
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.importer import import_from_string

from soundry.api.http.envelope import error_response
from soundry.config import Settings

BACKLOG = 4096
UNCOUNTED = ("/healthz", "/readyz", "/metrics")  # they must answer under load; long streams have their own caps
UNCOUNTED_SUFFIXES = ("/events", "/stream")


def address_group(host: str) -> str:
    """What a per-address cap counts: an IPv4 address (an IPv4-mapped IPv6 one too), or an IPv6 address's /64,
    since one IPv6 host gets a whole /64 (SLAAC, privacy addresses) and may use any address in it."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ip.ipv4_mapped) if ip.ipv4_mapped else str(ipaddress.IPv6Network((ip, 64), strict=False))
    return host


class InFlight:
    """Requests in progress in this process: in all, and per client address until the caller is
    authenticated (``authenticated(request)``). Shared by the cap and ``/readyz``."""

    def __init__(self, limit: int, per_address: int = 0):
        self.limit, self.per_address, self.active = limit, per_address, 0
        self.unauthenticated: Counter[str] = Counter()
        # (address, credential digest) -> requests sharing one unauthenticated slot: requests with the same
        # credential wait for one verification (soundry.service.credentials), so they cost the address one slot
        self._sharing: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()  # authentication runs in worker threads

    @property
    def overloaded(self) -> bool:
        return bool(self.limit) and self.active >= self.limit

    def admit(self, address: str, known: bool = False, credential: str | None = None) -> str | None:
        """Count a request from ``address`` (not against the address when its caller is ``known`` already; once
        per distinct ``credential`` digest while it is unverified), or say why it is refused ("overloaded" /
        "address")."""
        with self._lock:
            if self.overloaded:
                return "overloaded"
            if known:
                self.active += 1
                return None
            shared = (address, credential) if credential is not None else None
            if shared is not None and self._sharing[shared]:  # its slot is counted already
                self._sharing[shared] += 1
                self.active += 1
                return None
            if self.per_address and self.unauthenticated[address] >= self.per_address:
                return "address"
            self.active += 1
            self.unauthenticated[address] += 1
            if shared is not None:
                self._sharing[shared] = 1
            return None

    def release_address(self, address: str, credential: str | None = None) -> None:
        with self._lock:
            shared = (address, credential) if credential is not None else None
            if shared is not None:
                self._sharing[shared] -= 1
                if self._sharing[shared] > 0:  # others with the same credential still hold the slot
                    return
                del self._sharing[shared]
            self.unauthenticated[address] -= 1
            if self.unauthenticated[address] <= 0:
                del self.unauthenticated[address]

    def finish(self) -> None:
        with self._lock:
            self.active -= 1


def authenticated(request: HTTPConnection) -> None:
    """The request's caller is known: it no longer counts against its address's unauthenticated budget."""
    release = request.scope.pop("soundry.authenticated", None)
    if release is not None:
        release()


class ConcurrencyCap:
    """ASGI middleware: at most ``in_flight.limit`` HTTP requests in progress (0 = no cap; over it,
    503) and at most ``in_flight.per_address`` of them from one client address before their caller
    is authenticated (0 = no cap; over it, 429), both with ``Retry-After`` in the envelope. The
    address is the one uvicorn resolved (``X-Forwarded-For`` from trusted proxies only), as everywhere.
    (uvicorn's own ``limit_concurrency`` answers a bare-text 503 without ``Retry-After``, and counts
    long-lived streams, so it is not used.)"""

    def __init__(self, app: ASGIApp, in_flight: InFlight, retry_after: int = 1, known=None):
        self.app, self.in_flight, self.retry_after = app, in_flight, retry_after
        self.known = known  # credential -> its user if verified moments ago (no I/O), else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in UNCOUNTED or path.endswith(UNCOUNTED_SUFFIXES):
            await self.app(scope, receive, send)
            return
        address = address_group(scope["client"][0]) if scope.get("client") else "unknown"
        credential = self._credential(scope)
        known = credential is not None and self.known is not None and self.known(credential) is not None
        digest = hashlib.sha256(credential.encode()).hexdigest() if credential is not None else None
        refused = self.in_flight.admit(address, known, digest)
        if refused:
            retry = {"Retry-After": str(self.retry_after)}
            if refused == "overloaded":
                response = error_response(Request(scope), 503, "overloaded", f"the server has {self.in_flight.active} "
                                          "requests in progress; retry after the time in Retry-After", retry)
            else:
                response = error_response(Request(scope), 429, "rate_limited", f"{address} has "
                                          f"{self.in_flight.per_address} requests in progress that are not yet "
                                          "authenticated; finish those first, then retry", retry)
            await response(scope, receive, send)
            return
        released = known

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_flight.release_address(address, digest)

        scope["soundry.authenticated"] = release
        try:
            await self.app(scope, receive, send)
        finally:
            release()
            self.in_flight.finish()

    @staticmethod
    def _credential(scope: Scope) -> str | None:
        """The request's bearer credential (``Authorization`` or ``xi-api-key``), read before any I/O. One
        verified moments ago makes its caller known (not counted as unauthenticated: a burst with a valid key is
        never refused for the time its verification waits); requests with one unverified credential share one
        unauthenticated slot of the address (they wait for one verification)."""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, credential = value.decode("latin-1").partition(" ")
                if scheme.lower() in ("bearer", "token") and credential.strip():
                    return credential.strip()
            elif name == b"xi-api-key" and value.strip():
                return value.decode("latin-1").strip()
        return None


class BodyTimeout:
    """ASGI middleware: a request whose body stalls for ``seconds`` between chunks, or comes slower than
    ``min_rate`` bytes/s (its deadline is ``seconds`` after the app first reads it, plus 1 s per ``min_rate``
    bytes received, as Apache's mod_reqtimeout ``MinRate``: a byte now and then cannot hold a request for
    ever), is answered 408 in the envelope with ``Connection: close`` (so the server closes the connection);
    the app then sees the client as gone and whatever it answers is dropped."""

    def __init__(self, app: ASGIApp, seconds: float, min_rate: float = 0.0):
        self.app, self.seconds, self.min_rate = app, seconds, min_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.seconds:
            await self.app(scope, receive, send)
            return
        state = {"started": False, "timed_out": False, "body_done": False, "first": None, "received": 0}

        async def timed_receive():
            if state["timed_out"]:
                return {"type": "http.disconnect"}
            if state["body_done"]:
                return await receive()
            now = asyncio.get_running_loop().time()
            state["first"] = state["first"] or now
            wait = self.seconds
            if self.min_rate:  # what is left of the deadline that grows with the bytes received
                wait = min(wait, state["first"] + self.seconds + state["received"] / self.min_rate - now)
            try:
                if wait <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(receive(), wait)
            except TimeoutError:
                state["timed_out"] = True
                if not state["started"]:
                    state["started"] = True
                    why = (f"stalled for {self.seconds:g} s; send it without pauses" if wait >= self.seconds else
                           f"came slower than {self.min_rate:g} bytes/s after its first {self.seconds:g} s; send "
                           "it faster")
                    response = error_response(Request(scope), 408, "request_timeout", f"the request body {why}",
                                              {"Connection": "close"})
                    await response(scope, receive, send)
                return {"type": "http.disconnect"}
            state["received"] += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body", False):
                state["body_done"] = True
            return message

        async def guarded_send(message) -> None:
            if state["timed_out"]:
                return  # the 408 has been sent
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        await self.app(scope, timed_receive, guarded_send)


def with_header_timeout(base: type[asyncio.Protocol], seconds: float) -> type[asyncio.Protocol]:
    """``base`` (one of uvicorn's HTTP/1.1 protocols) closing a connection whose request head is not
    complete ``seconds`` after the connection opened or after the head's first byte (uvicorn has no
    such timeout; an idle keep-alive connection stays under ``timeout_keep_alive`` as before). A
    request head is complete when uvicorn starts its request cycle."""

    class HeaderTimeoutProtocol(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._head_timer: asyncio.TimerHandle | None = None
            self._head_cycle = None  # the cycle of the last complete head
            self._awaiting_head = True
            self._next_head_begun = False  # bytes after a whole request, before its response ended
            self._arm_head_timer()

        def _arm_head_timer(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(seconds, self._head_timed_out)

        def _disarm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _check_head(self) -> None:
            if self.cycle is not None and self.cycle is not self._head_cycle:  # a request head completed
                self._head_cycle, self._awaiting_head, self._next_head_begun = self.cycle, False, False
                self._disarm_head_timer()

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self._awaiting_head and not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._awaiting_head:
                self._arm_head_timer()  # from the head's first byte
            elif self.cycle is not None and not self.cycle.more_body:
                self._next_head_begun = True  # timed once the response in progress has ended
            super().data_received(data)
            self._check_head()

        def on_response_complete(self) -> None:
            pending = bool(getattr(self, "pipeline", None))  # httptools: a pipelined head already parsed
            super().on_response_complete()
            self._awaiting_head = not pending
            if self._awaiting_head and self._next_head_begun:
                self._arm_head_timer()
            self._check_head()  # h11 parses a buffered head here

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_timer()
            super().connection_lost(exc)

    HeaderTimeoutProtocol.__name__ = HeaderTimeoutProtocol.__qualname__ = f"HeaderTimeout{base.__name__}"
    return HeaderTimeoutProtocol


def uvicorn_config(app, settings: Settings, host: str, port: int, **overrides) -> uvicorn.Config:
    """The uvicorn settings of ``soundry serve`` (the tests serve with the same ones)."""
    http = overrides.pop("http", "auto")
    if isinstance(http, str):
        http = import_from_string(HTTP_PROTOCOLS[http])
    if settings.header_timeout:
        http = with_header_timeout(http, settings.header_timeout)
    options = dict(host=host, port=port, log_level="info", backlog=BACKLOG, http=http,
                   timeout_keep_alive=int(settings.keep_alive_seconds), proxy_headers=True,
                   forwarded_allow_ips=settings.forwarded_allow_ips)
    return uvicorn.Config(app, **{**options, **overrides})

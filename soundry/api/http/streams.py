"""Live progress streams (Server-Sent Events, ``…/{task_id}/events``) with bounded cost.

Each open stream reads its task from the database about twice a second, so streams are a per-user
cost like any other: at most ``max_event_streams_per_user`` open per user (429 beyond) and
``max_event_streams`` in all (503 beyond), each lives at most ``event_stream_seconds`` (then it
ends with ``event: expired`` and the client reconnects), and it stops as soon as the client goes
away. Their database reads run on a small limiter of their own (``POLL_THREADS`` at a time), so
streams never take the shared thread pool that every other request needs; when many streams are
open they poll more slowly instead. Counts are per API process (the events of one task are
watched from one connection, so a process-local count is what bounds a process's work).
Audio streams (``…/stream``) are counted the same way (``AudioStreams``): against the task's owner when the
owner asks with a credential, and against the task's signed link when the link is used (a link reaches
webhook receivers and can be shared: its holders cannot use up the owner's own streams).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Hashable

import anyio
import anyio.to_thread
from fastapi import Request
from fastapi.responses import StreamingResponse

from soundry.api.http.envelope import ApiError
from soundry.config import Settings
from soundry.tasks.models import FINAL_STATUSES

POLL_THREADS = 4


class OpenStreams:
    """Open long-lived responses of one kind in this process, counted per user and in all: at most
    ``per_user`` (429 beyond) and ``total`` (503 beyond), 0 = no cap. Used from the event loop only."""

    def __init__(self, per_user: int, total: int, what: str, alternative: str, retry_after: int):
        self.per_user, self.total, self.what, self.alternative = per_user, total, what, alternative
        self.retry_after = retry_after
        self._open: Counter[Hashable] = Counter()

    def open_count(self, user_id: Hashable | None = None) -> int:
        return self._open[user_id] if user_id is not None else sum(self._open.values())

    def reserve(self, user_id: Hashable, holder: str = "you have") -> None:
        """Count a new stream for the user (or another key: a signed link's), or refuse it (429 over the key's
        cap, 503 over the total)."""
        retry = {"Retry-After": str(self.retry_after)}
        if self.per_user and self._open[user_id] >= self.per_user:
            raise ApiError(429, "too_many_streams", f"{holder} {self._open[user_id]} {self.what} open; the "
                                                    f"limit is {self.per_user}: close one first", retry)
        if self.total and self.open_count() >= self.total:
            raise ApiError(503, "too_many_streams", f"the server has too many {self.what} open; "
                                                    f"{self.alternative}", retry)
        self._open[user_id] += 1

    def release(self, user_id: Hashable) -> None:
        self._open[user_id] -= 1
        if self._open[user_id] <= 0:
            del self._open[user_id]


class AudioStreams(OpenStreams):
    """Open audio streams (``…/stream``), counted against the task's owner (a signed link needs no
    header, but it names the task and so its owner)."""

    def __init__(self, settings: Settings):
        super().__init__(settings.max_audio_streams_per_user, settings.max_audio_streams, "audio streams",
                         "download the task's url_download once it is COMPLETED, or retry later", 5)


class EventStreams(OpenStreams):
    """The open progress streams of this process. Used from the event loop only (no locking)."""

    def __init__(self, settings: Settings, interval: float = 0.5, keepalive: float = 15.0):
        super().__init__(settings.max_event_streams_per_user, settings.max_event_streams, "progress streams",
                         "poll GET /v1/ai/audio_generation/{task_id} or retry later", max(1, math.ceil(interval * 10)))
        self.lifetime, self.interval, self.keepalive = settings.event_stream_seconds, interval, keepalive
        self._limiter: anyio.CapacityLimiter | None = None

    async def _read(self, fn: Callable[[], dict]) -> dict:
        if self._limiter is None:  # created on the event loop's thread, where it is used
            self._limiter = anyio.CapacityLimiter(POLL_THREADS)
        return await anyio.to_thread.run_sync(fn, limiter=self._limiter)

    def response(self, request: Request, user_id: int, read: Callable[[], dict]) -> StreamingResponse:
        """The stream of a task whose result object ``read()`` returns (blocking; run on the limiter),
        for a user who holds a reservation: released however the response ends."""
        return ReleasingResponse(lambda: self.release(user_id), self._events(request, read),
                                  media_type="text/event-stream",
                                  headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _events(self, request: Request, read: Callable[[], dict]) -> AsyncIterator[str]:
        """SSE lines until the task is final, the stream's lifetime passes, or the client disconnects."""
        deadline = time.monotonic() + self.lifetime
        last, last_sent = None, time.monotonic()
        while True:
            data = await self._read(read)
            final = data["status"] in FINAL_STATUSES
            state = (data["status"], data["percent"], data["queue_position"])
            if state != last or final:
                last, last_sent = state, time.monotonic()
                yield f"event: {'done' if final else 'status'}\ndata: {json.dumps(data)}\n\n"
            elif time.monotonic() - last_sent > self.keepalive:
                last_sent = time.monotonic()
                yield ": keep-alive\n\n"
            if final:
                return
            if time.monotonic() >= deadline:
                yield 'event: expired\ndata: {"reconnect": true}\n\n'
                return
            if await _disconnected_within(request, min(self.interval, deadline - time.monotonic())):
                return


class ReleasingResponse(StreamingResponse):
    """A streaming response that calls ``on_close`` when it ends, whether it finished, failed, or
    was cancelled by the client's disconnect (even before its first byte)."""

    def __init__(self, on_close: Callable[[], None], *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


async def _disconnected_within(request: Request, seconds: float) -> bool:
    """Wait up to ``seconds``; True as soon as the client has gone away."""
    end = time.monotonic() + max(0.0, seconds)
    while True:
        if await request.is_disconnected():
            return True
        left = end - time.monotonic()
        if left <= 0:
            return False
        await anyio.sleep(min(left, 0.1))

"""Waiting for a task's audio over HTTP: its live channel (embedded mode) or its end."""

from __future__ import annotations

import asyncio
import time

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from soundry.api.http.auth import services
from soundry.service.errors import ServiceError
from soundry.tasks.live_audio import AudioChannel
from soundry.tasks.models import FINAL_STATUSES, Task


class DisconnectWatch:
    """Notices the client going away while a route waits. (``request.is_disconnected()`` peeks at
    the receive channel without waiting, which under the app's HTTP middleware never sees the
    disconnect; this waits on it in a background task.) ``stop()`` before answering."""

    def __init__(self, request: Request):
        self.request = request
        self.event = asyncio.Event()  # set when the client has gone
        if self.gone:
            self.event.set()
        self._task = None if self.gone else asyncio.ensure_future(self._watch())

    @property
    def gone(self) -> bool:  # remembered on the request: the disconnect message comes only once
        return getattr(self.request.state, "client_gone", False)

    async def _watch(self) -> None:
        while True:
            message = await self.request.receive()
            if message["type"] == "http.disconnect":
                self.request.state.client_gone = True
                self.event.set()
                return

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def first_audio(request: Request, task_id: str, poll: float = 0.05, check_every: float = 0.5
                      ) -> AudioChannel | None:
    """The task's live channel once its first chunk exists, with the caller counted as a listener
    (``channel.detach()`` when done), or None when the task ends (or the client leaves) before
    any live audio: then only its stored file is left. Without a channel (Celery workers on
    RabbitMQ) this waits for the end."""
    svc = services(request)
    channel = None
    checked = -check_every
    watch = DisconnectWatch(request)
    try:
        while True:
            if channel is None and svc.live is not None:
                channel = svc.live.get(task_id)
                if channel is not None:
                    channel.attach()  # from now on the engine decodes this task's stream
            ended = False
            if time.monotonic() - checked >= check_every:  # the database at most every check_every s
                checked = time.monotonic()
                task = await run_in_threadpool(svc.store.get, task_id)
                ended = task is None or task.status in FINAL_STATUSES
            if channel is not None:
                await channel.refresh()  # chunks written before the task ended are all visible now
                if channel.samples:
                    return channel
                if channel.closed:
                    break
            if ended or watch.gone:
                break
            await asyncio.sleep(channel.poll_interval if channel is not None else poll)
    except BaseException:
        if channel is not None:
            channel.detach()
        raise
    finally:
        watch.stop()
    if channel is not None:
        channel.detach()
    return None


async def task_end(request: Request, task_id: str, timeout: float | None = None) -> Task | None:
    """The task once it is COMPLETED, FAILED or CANCELED; None if the client left (or ``timeout`` passed) first.
    Without ``timeout`` the wait is bounded by the ``max_wait_seconds`` setting: past it, 503 ``wait_timeout``
    (the task goes on)."""
    svc = services(request)
    bound = timeout if timeout is not None else svc.settings.max_wait_seconds
    watch = DisconnectWatch(request)
    try:
        task = await svc.tasks.wait(task_id, bound, watch.event)
    finally:
        watch.stop()
    if task is None and timeout is None and not watch.gone:
        raise ServiceError(503, "wait_timeout", f"task {task_id} did not end within {bound:g} s "
                                                "(max_wait_seconds); it goes on: follow it at "
                                                f"GET /v1/ai/audio_generation/{task_id}", {"Retry-After": "30"})
    return task

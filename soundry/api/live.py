"""Waiting for a task's audio over HTTP: its live channel (embedded mode) or its end."""

from __future__ import annotations

import asyncio

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from soundry.api.deps import services
from soundry.tasks.live_audio import AudioChannel
from soundry.tasks.models import FINAL_STATUSES, Task


async def first_audio(request: Request, task_id: str, poll: float = 0.05) -> AudioChannel | None:
    """The task's live channel once its first chunk exists, with the caller counted as a listener
    (``channel.detach()`` when done), or None when the task ends (or the client leaves) before
    any live audio: then only its stored file is left. Where tasks run in other processes
    (Celery workers) there is no channel, and this waits for the end."""
    svc = services(request)
    channel: AudioChannel | None = None
    try:
        while True:
            if channel is None and svc.live is not None:
                channel = svc.live.get(task_id)
                if channel is not None:
                    channel.attach()  # from now on the engine decodes this task's stream
            if channel is not None and channel.chunks:
                return channel
            if channel is not None and channel.closed:
                break
            if channel is None:
                task = await run_in_threadpool(svc.store.get, task_id)
                if task is None or task.status in FINAL_STATUSES:
                    break
            if await request.is_disconnected():
                break
            await asyncio.sleep(poll)
    except BaseException:
        if channel is not None:
            channel.detach()
        raise
    if channel is not None:
        channel.detach()
    return None


async def task_end(request: Request, task_id: str, poll: float = 0.1) -> Task | None:
    """The task once it is COMPLETED, FAILED or CANCELED; None if the client left first."""
    store = services(request).store
    while True:
        task = await run_in_threadpool(store.get, task_id)
        if task is None or task.status in FINAL_STATUSES:
            return task
        if await request.is_disconnected():
            return None
        await asyncio.sleep(poll)

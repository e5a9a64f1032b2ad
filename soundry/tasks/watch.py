"""Waiting for tasks to end without a database read per waiter: ``TaskWatch.wait_end``.

A task ended by this process (the embedded worker, a cancel) wakes its waiters at once (the store calls
``ended`` after its commit). A task ended elsewhere (a Celery worker, another API process) is seen by one
batched query for every waited task together, every ``interval`` seconds, on one thread: the database work of
waiting is O(1) per interval whatever the number of waiters, and waits never hold the shared thread pool.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from soundry.tasks.models import Task
from soundry.tasks.store import TaskStore


class TaskWatch:
    def __init__(self, store: TaskStore, interval: float = 1.0):
        self.store, self.interval = store, interval
        self._lock = threading.Lock()
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future]]] = {}
        self._poller: asyncio.Task | None = None
        # its own threads, not the shared pool every request needs
        self._reads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="soundry-watch")
        self.polls = 0  # batched queries made (for tests and metrics)
        store.end_hooks.append(self.ended)

    def ended(self, task_id: str) -> None:
        """This process ended ``task_id`` (any thread): wake its waiters."""
        with self._lock:
            waiters = self._waiters.pop(task_id, [])
        for loop, future in waiters:
            loop.call_soon_threadsafe(_settle, future, None)

    async def wait_end(self, task_id: str, timeout: float | None = None) -> Task | None:
        """The task once ended (None when ``timeout`` passes first, or the task does not exist)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        with self._lock:
            self._waiters.setdefault(task_id, []).append((loop, future))
        try:
            task = await self._read(self.store.get, task_id)  # it may have ended before we registered
            if task is None or task.status in ("COMPLETED", "FAILED", "CANCELED"):
                return task
            self._ensure_poller(loop)
            try:
                ended = await asyncio.wait_for(asyncio.shield(future), timeout)
            except TimeoutError:
                return None
            return ended if ended is not None else await self._read(self.store.get, task_id)
        finally:
            self._forget(task_id, future)

    def waiting(self) -> int:
        with self._lock:
            return sum(len(w) for w in self._waiters.values())

    # -- internals -------------------------------------------------------------------------------------
    def _forget(self, task_id: str, future: asyncio.Future) -> None:
        with self._lock:
            rest = [w for w in self._waiters.get(task_id, []) if w[1] is not future]
            if rest:
                self._waiters[task_id] = rest
            else:
                self._waiters.pop(task_id, None)
        if not future.done():
            future.cancel()

    async def _read(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._reads, fn, *args)

    def _ensure_poller(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._poller is None or self._poller.done() or self._poller.get_loop() is not loop:
            self._poller = loop.create_task(self._poll())

    async def _poll(self) -> None:
        """One query for all waited tasks every ``interval`` seconds, while anyone waits."""
        while True:
            await asyncio.sleep(self.interval)
            with self._lock:
                ids = list(self._waiters)
            if not ids:
                return
            self.polls += 1
            ended = await self._read(self.store.ended_among, ids)
            for task_id, task in ended.items():
                with self._lock:
                    waiters = self._waiters.pop(task_id, [])
                for loop, future in waiters:
                    loop.call_soon_threadsafe(_settle, future, task)


def _settle(future: asyncio.Future, task: Task | None) -> None:
    if not future.done():
        future.set_result(task)

"""The embedded queue: a dispatcher thread in the API process feeds PENDING tasks to a thread
pool of executions, so many tasks are in flight at once and the engine batches them."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from soundry.tasks.runner import TaskRunner

log = logging.getLogger(__name__)


class EmbeddedQueue:
    def __init__(self, runner: TaskRunner, concurrency: int = 32, poll: float = 1.0):
        self.runner, self.poll = runner, poll
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="soundry-task")
        self.concurrency = concurrency
        self._inflight: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.runner.start()
        # What a dead process left PROCESSING is taken once its lease lapses (runnable_ids below), never
        # while its worker is alive: another server or worker may share this database.
        if n := self.runner.store.requeue_lapsed():
            log.info("re-queued %d interrupted tasks", n)
        self._thread = threading.Thread(target=self._dispatch, name="soundry-dispatch", daemon=True)
        self._thread.start()

    def enqueue(self, task_id: str, model: str) -> None:
        self._wake.set()

    def cancel(self, task_id: str) -> None:
        self.runner.engines.cancel(task_id)

    def stop(self) -> None:
        self._stop.set()
        self.runner.stop()
        self._wake.set()
        if self._thread:
            self._thread.join(5)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _dispatch(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll)
            self._wake.clear()
            try:
                with self._lock:
                    room = self.concurrency - len(self._inflight)
                if room <= 0:
                    continue
                for task_id in self.runner.store.runnable_ids(limit=room):
                    with self._lock:
                        if task_id in self._inflight:
                            continue
                        self._inflight.add(task_id)
                    self.pool.submit(self._run, task_id)
            except Exception:
                log.exception("dispatcher error")

    def _run(self, task_id: str) -> None:
        try:
            self.runner.execute(task_id)
        except Exception:
            log.exception("task %s crashed", task_id)
            self.runner.store.fail(task_id, "internal error while running the task")
        finally:
            with self._lock:
                self._inflight.discard(task_id)
            self._wake.set()

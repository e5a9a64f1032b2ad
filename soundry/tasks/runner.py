"""Executing one task, idempotently: claim it, generate, encode, store, mark it done.

Used by the embedded worker and by Celery workers alike. A task can only be claimed while
PENDING, so a redelivered task that another execution already finished is skipped; the audio
file is written (atomically) before the task says COMPLETED.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from soundry.audio import encode, normalize
from soundry.engine import GenerationCanceled, GenerationRequest
from soundry.storage import Storage
from soundry.tasks.engines import EngineManager, ModelUnavailable
from soundry.tasks.store import TaskStore

log = logging.getLogger(__name__)
WORKER_ID = f"{socket.gethostname()}:{id(object()):x}"


class TaskRunner:
    def __init__(self, store: TaskStore, storage: Storage, engines: EngineManager, worker_id: str = WORKER_ID,
                 progress_interval: float = 0.5):
        self.store, self.storage, self.engines = store, storage, engines
        self.worker_id, self.progress_interval = worker_id, progress_interval

    def execute(self, task_id: str) -> str:
        """Run a task to its end; returns its final status (or 'SKIPPED' if not claimable)."""
        task = self.store.claim(task_id, self.worker_id)
        if task is None:
            return "SKIPPED"
        cfg = task.config
        try:
            engine = self.engines.get(task.model)
        except ModelUnavailable as exc:
            self.store.fail(task_id, str(exc))
            return "FAILED"
        request = GenerationRequest(
            prompt=task.prompt, duration=float(cfg["duration"]), top_k=int(cfg["top_k"]), top_p=float(cfg["top_p"]),
            temperature=float(cfg["temperature"]), cfg_coef=float(cfg["cfg_coef"]), seed=cfg.get("seed"),
            negative_prompt=task.negative_prompt or None, id=task_id)
        watcher = _ProgressWatcher(self.store, engine, task_id, self.progress_interval)
        try:
            result = engine.submit(request, watcher).result()
        except GenerationCanceled:
            self.store.cancel(task_id)
            return "CANCELED"
        except Exception as exc:
            log.exception("task %s failed", task_id)
            self.store.fail(task_id, f"generation failed: {exc}")
            return "FAILED"
        try:
            audio = normalize(result.audio.numpy(), result.sample_rate, cfg.get("normalization", "loudness"),
                              float(cfg.get("target_lufs", -14.0)))
            encoded = encode(audio, result.sample_rate, cfg.get("output_format", "wav"))
            key = f"{task.user_id}/{task_id}.{encoded.extension}"
            self.storage.put(key, encoded.data, encoded.content_type)
        except Exception as exc:
            log.exception("task %s: saving audio failed", task_id)
            self.store.fail(task_id, f"saving the audio failed: {exc}")
            return "FAILED"
        done = self.store.complete(task_id, key, encoded.extension, encoded.sample_rate,
                                   result.audio.shape[-1] / result.sample_rate, request.seed)
        if not done:  # canceled while encoding: the file is not served
            self.storage.delete(key)
            return "CANCELED"
        return "COMPLETED"


class _ProgressWatcher:
    """Engine progress callback: writes percent (throttled) and notices cancellation."""

    def __init__(self, store: TaskStore, engine, task_id: str, interval: float):
        self.store, self.engine, self.task_id, self.interval = store, engine, task_id, interval
        self.last = 0.0
        self.lock = threading.Lock()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < self.interval and done < total:
            return
        self.last = now
        percent = min(99, int(100 * done / max(1, total)))
        threading.Thread(target=self._update, args=(percent,), daemon=True).start()

    def _update(self, percent: int) -> None:
        with self.lock:
            task = self.store.get(self.task_id)
            if task is not None and task.status == "CANCELED":
                self.engine.cancel(self.task_id)
            else:
                self.store.set_percent(self.task_id, percent)

"""``soundry worker``: a Celery worker process that loads its models once and feeds the engine.

Many task executions run at once on a threads pool; each submits to the model's continuous-
batching engine, so concurrent tasks share decode steps. A reconciler thread re-sends tasks
whose message may be gone: PENDING for long, or PROCESSING under a lapsed lease (dead worker).
"""

from __future__ import annotations

import logging
import os
import threading
import time

from soundry.config import Settings
from soundry.storage import open_storage
from soundry.tasks import distributed
from soundry.tasks.engines import EngineManager
from soundry.tasks.routing import route
from soundry.tasks.runner import TaskRunner
from soundry.tasks.store import TaskStore
from soundry.tasks.webhooks import WebhookSender, attach_webhooks

log = logging.getLogger(__name__)


class Reconciler:
    """Re-sends stale tasks of this worker's models (duplicates are harmless: claims are atomic)."""

    def __init__(self, store: TaskStore, queue: distributed.CeleryQueue, models: list[str], interval: float,
                 pending_for: float):
        self.store, self.queue, self.models = store, queue, models
        self.interval, self.pending_for = interval, pending_for
        self._sent: dict[str, float] = {}
        self._stop = threading.Event()

    def start(self) -> Reconciler:
        threading.Thread(target=self._loop, name="soundry-reconcile", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception:
                log.exception("reconciler pass failed")

    def run_once(self) -> int:
        now, sent = time.monotonic(), 0
        quiet = max(self.pending_for, 3 * self.interval)  # re-send a task at most once in this window
        self._sent = {t: when for t, when in self._sent.items() if now - when < quiet}
        for task_id, model in self.store.stale_tasks(self.models, self.pending_for):
            if task_id in self._sent:
                continue
            self._sent[task_id] = now
            self.queue.enqueue(task_id, model)
            sent += 1
        if sent:
            log.info("re-sent %d stale tasks", sent)
        return sent


def run_worker(settings: Settings, models: list[str], concurrency: int = 32, loglevel: str = "INFO",
               prediction_body=None) -> None:
    """A Celery worker of ``models``; ``prediction_body`` renders Replicate/Cog webhook bodies (``WebhookSender``)."""
    if not settings.broker_url:
        raise SystemExit("soundry worker needs a broker: set --broker / SOUNDRY_BROKER_URL (redis://… or amqp://…)")
    store = TaskStore(settings.database_url)
    storage = open_storage(settings.storage_url, settings)
    engines = EngineManager.from_settings(settings)
    for name in models:  # load each model once, before taking tasks
        log.info("loading %s", name)
        engines.get(name)
    live = None
    if settings.broker_url.startswith(("redis://", "rediss://")):  # live audio to the API processes
        from soundry.tasks.live_redis import RedisLiveWriter

        live = RedisLiveWriter(settings.broker_url)
    runner = TaskRunner(store, storage, engines, lease_seconds=settings.lease_seconds, live=live,
                        max_attempts=settings.max_task_attempts).start()
    webhooks = attach_webhooks(runner, WebhookSender(store, settings, prediction_body))
    distributed.set_runner(runner)
    queue = distributed.CeleryQueue(settings.broker_url)
    names = sorted({n for model in models for n in store_models_of(model)})
    Reconciler(store, queue, names, settings.reconcile_interval, settings.stale_pending_seconds).start()
    queues = sorted({route(m)[1] for m in models})
    log.info("worker %s consuming %s", runner.worker_id, ",".join(queues))
    try:
        queue.app.worker_main(["worker", "--pool", "threads", "--concurrency", str(concurrency),
                               "--queues", ",".join(queues), "--hostname", f"soundry-{os.getpid()}@%h",
                               "--loglevel", loglevel, "--without-gossip", "--without-mingle"])
    finally:
        webhooks.stop()
        runner.stop()
        engines.stop()


def store_models_of(model: str) -> list[str]:
    """The task ``model`` values a worker of ``model`` serves: every name of the same family."""
    from soundry.models import catalog

    names = catalog.active()
    fam = names.get(model).family
    return [n for n in names.names() if names.get(n).family == fam]

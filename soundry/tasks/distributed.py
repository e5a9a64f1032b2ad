"""The distributed queue: Celery over Redis or RabbitMQ.

The API sends ``tasks.audiogen_task`` / ``tasks.musicgen_task`` (one task name per family) with the task id to
``audiogen_queue`` / ``musicgen_queue``; a ``soundry worker`` consumes them. Messages are
acknowledged late (after the task ends) and requeued if the worker is lost; execution is
idempotent (see ``TaskRunner``), so a redelivered message never produces a second result.
Progress, status and audio go to the database and storage; there is no result backend.
"""

from __future__ import annotations

import logging

from celery import Celery

from soundry.tasks.routing import TASK_NAMES, route

log = logging.getLogger(__name__)
_runner = None  # the worker process's TaskRunner (set by soundry.tasks.worker)


def make_celery(broker_url: str) -> Celery:
    app = Celery("soundry", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,  # acknowledge after the task ends...
        task_reject_on_worker_lost=True,  # ...and requeue it if the worker process dies
        task_ignore_result=True,  # results live in the database, never in a result backend
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": 3600},  # Redis: redeliver unacked after an hour
        task_routes={name: {"queue": queue} for name, queue in TASK_NAMES.values()},
        task_default_queue="audiogen_queue",
    )
    for name, _queue in TASK_NAMES.values():
        app.task(name=name, acks_late=True, ignore_result=True)(_execute)
    return app


def _execute(task_id: str) -> str:
    if _runner is None:
        raise RuntimeError("this process is not a soundry worker (no task runner)")
    return _runner.execute(task_id)


def set_runner(runner) -> None:
    global _runner
    _runner = runner


class CeleryQueue:
    """What the API uses to hand tasks to workers."""

    def __init__(self, broker_url: str):
        self.app = make_celery(broker_url)

    def enqueue(self, task_id: str, model: str) -> None:
        name, queue = route(model)
        try:
            self.app.send_task(name, args=[task_id], queue=queue)
        except Exception:  # the task stays PENDING in the database; workers re-send stale ones
            log.exception("could not send task %s to %s; a worker's reconciler will re-send it", task_id, queue)

    def cancel(self, task_id: str) -> None:
        """Nothing to send: the worker sees CANCELED in the database at its next progress write."""

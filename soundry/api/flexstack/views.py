"""How FlexStack shows a task to its owner (``soundry.tasks.result``'s shape, with its queue position and ETA)."""

from __future__ import annotations

from fastapi import Request

from soundry.api.http.auth import services
from soundry.api.http.links import link_base
from soundry.tasks.models import Task
from soundry.tasks.result import eta_seconds, public_config, task_payload

__all__ = ["link_base", "public_config", "task_result"]


def task_result(request: Request, task: Task) -> dict:
    svc = services(request)
    position = svc.store.queue_position(task)
    rate = svc.store.seconds_per_audio_second(task.model) if task.status == "PENDING" else None
    eta = eta_seconds(task, position, rate, svc.settings.max_batch)
    return task_payload(task, svc.settings, link_base(request), position, eta)

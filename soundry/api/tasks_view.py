"""How a task is shown to its owner (the FlexStack result shape plus our extras)."""

from __future__ import annotations

from fastapi import Request

from soundry.accounts import fmt_time
from soundry.api.deps import services
from soundry.api.schemas import TASK_NAMES, family
from soundry.api.signing import signed_path
from soundry.tasks.models import Task


def public_config(task: Task) -> dict:
    task_name, queue = TASK_NAMES[family(task.model)]
    return {**task.config, "task_name": task_name, "task_type": "TEXT-TO-AUDIO", "queue_name": queue}


def download_url(request: Request, task: Task) -> str | None:
    if task.status != "COMPLETED" or not task.file_key:
        return None
    svc = services(request)
    path = signed_path(svc.settings.secret, task.id, task.file_format, svc.settings.download_ttl)
    base = (svc.settings.public_url or str(request.base_url)).rstrip("/")
    return base + path


def task_result(request: Request, task: Task) -> dict:
    svc = services(request)
    inner = {
        "task_id": task.id, "total_tasks": 1, "percent": task.percent, "status": task.status,
        "url_download": download_url(request, task), "error_description": task.error if task.status == "FAILED" else "",
        "prompt": task.prompt, "negative_prompt": task.negative_prompt, "config": public_config(task),
        "queue_position": svc.store.queue_position(task), "created_at": fmt_time(task.created_at),
        "started_at": fmt_time(task.started_at), "finished_at": fmt_time(task.finished_at),
    }
    if task.status == "COMPLETED":
        inner.update(duration=round(task.audio_seconds, 4), sample_rate=task.sample_rate,
                     output_format=task.file_format, seed=task.seed)
    return {"is_success": task.status != "FAILED", "data": inner}

"""Which Celery task and queue serve a model (the names the API echoes in a task's config)."""

from __future__ import annotations

from soundry.models.catalog import model_family

TASK_NAMES = {"audiogen": ("tasks.audiogen_task", "audiogen_queue"),
              "musicgen": ("tasks.musicgen_task", "musicgen_queue")}


def route(model: str) -> tuple[str, str]:
    """(task_name, queue_name) for a model name or alias."""
    return TASK_NAMES[model_family(model)]

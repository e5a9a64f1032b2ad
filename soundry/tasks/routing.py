"""Which Celery task and queue serve a model (the names the API echoes in a task's config): one per family, so
workers can be started per family."""

from __future__ import annotations

from soundry.models.catalog import FAMILIES, model_family


def _names(family: str) -> tuple[str, str]:
    stem = family.replace("-", "_")
    return f"tasks.{stem}_task", f"{stem}_queue"


# audiogen → tasks.audiogen_task on audiogen_queue (FlexStack's names), musicgen, stable_audio_open, stable_audio_3
TASK_NAMES = {family: _names(family) for family in FAMILIES}


def route(model: str) -> tuple[str, str]:
    """(task_name, queue_name) for a model name or alias."""
    return TASK_NAMES[model_family(model)]

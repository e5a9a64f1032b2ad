"""A task as its owner sees it: the FlexStack result shape plus our extras (shared by the API,
its live events and webhooks)."""

from __future__ import annotations

import datetime as dt

from soundry.config import Settings
from soundry.signing import signed_path, signed_stream_path
from soundry.tasks.models import Task, utcnow
from soundry.tasks.routing import route


def public_config(task: Task) -> dict:
    task_name, queue = route(task.model)
    return {**task.config, "task_name": task_name, "task_type": "TEXT-TO-AUDIO", "queue_name": queue}


DEFAULT_BASE = "http://127.0.0.1:8000"  # serve's default address
WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # listening everywhere: name this machine


def origin(scheme: str, host: str, port: int) -> str:
    """``scheme://host[:port]``: an IPv6 address in brackets, the scheme's default port left out."""
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + ("" if port == {"http": 80, "https": 443}.get(scheme) else f":{port}")


def listened_url(host: str, port: int) -> str:
    """The base URL of a server listening on ``host:port`` (a wildcard address: this machine's loopback)."""
    return origin("http", WILDCARDS.get(host, host), port)


def base_without_request(settings: Settings) -> str:
    """The base of links sent outside a request (webhooks): ``public_url``, else the address ``serve``
    listens on (a Celery worker knows neither: set ``public_url`` there)."""
    return settings.public_url or settings.listen_url or DEFAULT_BASE


def download_url(task: Task, settings: Settings, base_url: str) -> str | None:
    if task.status != "COMPLETED" or not task.file_key:
        return None
    path = signed_path(settings.secret, task.id, task.file_format, settings.download_ttl)
    return (settings.public_url or base_url).rstrip("/") + path


def stream_url(task: Task, settings: Settings, base_url: str) -> str | None:
    """A signed link to the audio while it is generated (null once the task has ended)."""
    if task.status not in ("PENDING", "PROCESSING"):
        return None
    return (settings.public_url or base_url).rstrip("/") + signed_stream_path(settings.secret, task.id,
                                                                              settings.download_ttl)


def eta_seconds(task: Task, queue_position: int | None, seconds_per_audio_second: float | None,
                max_batch: int) -> float | None:
    """A rough estimate of the seconds until the task finishes (None when there is nothing to go on)."""
    if task.status == "PROCESSING" and task.started_at and task.percent > 0:
        elapsed = (utcnow() - task.started_at).total_seconds()
        return round(elapsed * (100 - task.percent) / task.percent, 1)
    if task.status == "PENDING" and queue_position and seconds_per_audio_second:
        one = seconds_per_audio_second * float(task.config.get("duration", 5))
        return round(one * (1 + (queue_position - 1) // max(1, max_batch)), 1)
    return None


def decoder_of(task: Task) -> str:
    """What decoded the task's stored file: the decoder its configs asked for (the runner never falls back to
    another; tasks from before the setting existed were decoded by EnCodec); a diffusion model's latents (its
    configs have steps and no decoder) are decoded by its autoencoder."""
    cfg = task.config or {}
    return cfg.get("decoder") or ("autoencoder" if cfg.get("steps") is not None else "encodec")


def task_payload(task: Task, settings: Settings, base_url: str, queue_position: int | None = None,
                 eta: float | None = None) -> dict:
    inner = {
        "task_id": task.id, "total_tasks": 1, "percent": task.percent, "status": task.status,
        "url_download": download_url(task, settings, base_url),
        "url_stream": stream_url(task, settings, base_url),
        "error_description": task.error if task.status == "FAILED" else "",
        "prompt": task.prompt, "negative_prompt": task.negative_prompt, "config": public_config(task),
        "queue_position": queue_position, "eta_seconds": eta, "created_at": fmt_time(task.created_at),
        "started_at": fmt_time(task.started_at), "finished_at": fmt_time(task.finished_at),
    }
    inner["feedback"] = (None if task.rating is None else
                         {"rating": task.rating, "feedback": task.feedback, "rated_at": fmt_time(task.rated_at)})
    if task.status == "COMPLETED":
        inner.update(duration=round(task.audio_seconds, 4), sample_rate=task.sample_rate,
                     output_format=task.file_format, seed=task.seed, decoder=decoder_of(task))
    return {"is_success": task.status != "FAILED", "data": inner}


def fmt_time(t: dt.datetime | None) -> str | None:
    """A timestamp as every answer writes it (UTC, ``YYYY-MM-DD HH:MM:SS.ffffff``)."""
    return t.strftime("%Y-%m-%d %H:%M:%S.%f") if t else None

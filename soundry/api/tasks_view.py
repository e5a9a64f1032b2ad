"""How a task is shown to its owner in an HTTP answer (see soundry.tasks.result)."""

from __future__ import annotations

import re

from fastapi import Request

from soundry.api.deps import services
from soundry.tasks.models import Task
from soundry.tasks.result import base_without_request, eta_seconds, origin, public_config, task_payload

__all__ = ["link_base", "public_config", "task_result"]
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::[0-9]{1,5})?")


def task_result(request: Request, task: Task) -> dict:
    svc = services(request)
    position = svc.store.queue_position(task)
    rate = svc.store.seconds_per_audio_second(task.model) if task.status == "PENDING" else None
    eta = eta_seconds(task, position, rate, svc.settings.max_batch)
    return task_payload(task, svc.settings, link_base(request), position, eta)


def link_base(request: Request) -> str:
    """The base of the links signed for this request's answer: ``public_url``; else the request's own
    base URL when its Host header names one of ``allowed_hosts``; else the address this connection
    reached (the socket's, which no header can change). A spoofed Host never gets a signed link."""
    settings = services(request).settings
    if settings.public_url:
        return settings.public_url
    if _allowed(request.headers.get("host", ""), settings.allowed_hosts):
        return str(request.base_url)
    server = request.scope.get("server")
    if not server or not isinstance(server[1], int):  # a Unix socket: what serve was told to listen on
        return base_without_request(settings)
    return origin(request.url.scheme, server[0], server[1]) + request.scope.get("root_path", "")


def _allowed(host_header: str, allowed: list[str]) -> bool:
    """Whether a Host header (name[:port], nothing else) names one of ``allowed`` (``*.example.org``: its
    subdomains)."""
    match = _HOST.fullmatch(host_header.lower())
    if match is None:
        return False
    name = match.group(1).strip("[]")
    return any(name == entry or (entry.startswith("*.") and name.endswith(entry[1:]))
               for entry in (a.strip().lower() for a in allowed))

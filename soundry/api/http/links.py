"""The base URL of the links soundry signs into an answer (downloads, streams, Replicate's files)."""

from __future__ import annotations

import re

from fastapi import Request

from soundry.api.http.auth import services
from soundry.tasks.result import base_without_request, origin

_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::[0-9]{1,5})?")


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

"""Signed, expiring download links: /v1/files/{task_id}.{ext}?expires=...&sig=... (no auth header)."""

from __future__ import annotations

import hashlib
import hmac
import time


def sign(secret: str, task_id: str, ext: str, expires: int) -> str:
    msg = f"{task_id}.{ext}:{expires}".encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def signed_path(secret: str, task_id: str, ext: str, ttl: int) -> str:
    expires = int(time.time()) + ttl
    return f"/v1/files/{task_id}.{ext}?expires={expires}&sig={sign(secret, task_id, ext, expires)}"


def verify(secret: str, task_id: str, ext: str, expires: int, sig: str) -> str | None:
    """None if valid, else the reason."""
    if expires < time.time():
        return "download link expired"
    if not hmac.compare_digest(sign(secret, task_id, ext, expires), sig):
        return "invalid download signature"
    return None

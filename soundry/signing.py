"""HMAC signatures: download links /v1/files/{task_id}.{ext}?expires=...&sig=... (no auth header) and webhooks."""

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


def signed_stream_path(secret: str, task_id: str, ttl: int) -> str:
    """A link to the task's live stream for players that cannot send an Authorization header."""
    expires = int(time.time()) + ttl
    return f"/v1/ai/audio_generation/{task_id}/stream?expires={expires}&sig={sign(secret, task_id, 'stream', expires)}"


def verify(secret: str, task_id: str, ext: str, expires: int, sig: str) -> str | None:
    """None if valid, else the reason."""
    if expires < time.time():
        return "download link expired"
    if not sig.isascii() or not hmac.compare_digest(sign(secret, task_id, ext, expires), sig):
        return "invalid download signature"
    return None


def webhook_secret(secret: str, user_id: int) -> str:
    """Each user's webhook signing secret (derived; shown in the user's profile)."""
    return "whsec_" + hmac.new(secret.encode(), f"webhook:{user_id}".encode(), hashlib.sha256).hexdigest()[:40]


def webhook_signature(user_secret: str, body: bytes, timestamp: int) -> str:
    """Header ``X-Soundry-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">``."""
    mac = hmac.new(user_secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"

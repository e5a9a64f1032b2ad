"""Keys and HMAC signatures: download links /v1/files/{task_id}.{ext}?expires=...&sig=... (no auth
header), webhooks, and the per-purpose keys derived from the server secret.

One server secret, never used directly: every purpose (JWTs, download links, webhook secrets, API-key
digests) gets its own key, derived with HKDF-SHA256, so a key leaked or misused for one purpose says
nothing about the others.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import time

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PURPOSES = ("jwt", "download", "webhook", "api-key")


@functools.lru_cache(maxsize=64)
def derive_key(secret: str, purpose: str) -> bytes:
    """A 32-byte key for one purpose (one of PURPOSES), derived from the server secret with HKDF."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown key purpose {purpose!r}")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=f"soundry/{purpose}/v1".encode()).derive(secret.encode())


def sign(secret: str, task_id: str, ext: str, expires: int) -> str:
    msg = f"{task_id}.{ext}:{expires}".encode()
    return hmac.new(derive_key(secret, "download"), msg, hashlib.sha256).hexdigest()


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
    mac = hmac.new(derive_key(secret, "webhook"), f"webhook:{user_id}".encode(), hashlib.sha256)
    return "whsec_" + mac.hexdigest()[:40]


def webhook_signature(user_secret: str, body: bytes, timestamp: int) -> str:
    """Header ``X-Soundry-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">``."""
    mac = hmac.new(user_secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"

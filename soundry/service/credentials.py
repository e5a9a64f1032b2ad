"""Who a bearer credential (API key or access token) belongs to, remembered for a few seconds.

A client sends the same key with every request; verifying it means a database read (and an HMAC), which runs
on the thread pool that every request shares. Under a burst, requests with a valid key then waited
"unauthenticated" behind the pool and were refused by the per-address cap on unauthenticated requests. Here a
credential verified once is known for ``ttl`` seconds (never past an access token's expiry): requests with it
are authenticated on the event loop at once, and concurrent first uses of one credential share one
verification. Refusals are never remembered (each counts against the address, as before). A key revoked or a
user disabled through this process is forgotten at once; through another process (the CLI), within ``ttl``.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import OrderedDict

import jwt

from soundry.service.accounts import KEY_PREFIX, Accounts
from soundry.tasks.models import User


def _digest(credential: str) -> str:
    return hashlib.sha256(credential.encode(errors="replace")).hexdigest()


class CredentialCache:
    def __init__(self, accounts: Accounts, ttl: float = 10.0, max_entries: int = 10_000):
        self.accounts, self.ttl, self.max_entries = accounts, ttl, max_entries
        self._known: OrderedDict[str, tuple[float, User]] = OrderedDict()
        self._pending: dict[str, asyncio.Future] = {}
        self._lock = threading.Lock()
        accounts.changed_hooks.append(self.clear)

    def known(self, credential: str) -> User | None:
        """The user of a credential verified less than ``ttl`` seconds ago (no I/O)."""
        if self.ttl <= 0:
            return None
        key = _digest(credential)
        with self._lock:
            hit = self._known.get(key)
            if hit is None:
                return None
            if hit[0] <= time.monotonic():
                del self._known[key]
                return None
            return hit[1]

    async def user_for(self, credential: str) -> User:
        """The credential's user; raises AuthError / AuthBusy as ``Accounts.user_for_bearer``."""
        user = self.known(credential)
        if user is not None:
            return user
        key = _digest(credential)
        pending = self._pending.get(key)
        if pending is None:  # the first use: one verification, on the thread pool, shared by concurrent uses
            from starlette.concurrency import run_in_threadpool

            pending = asyncio.ensure_future(run_in_threadpool(self.accounts.user_for_bearer, credential))
            self._pending[key] = pending
            pending.add_done_callback(lambda done: self._settled(key, credential, done))
        return await asyncio.shield(pending)

    def _settled(self, key: str, credential: str, done: asyncio.Future) -> None:
        self._pending.pop(key, None)
        if done.cancelled() or done.exception() is not None or self.ttl <= 0:
            return
        until = time.monotonic() + self.ttl
        if not credential.startswith(KEY_PREFIX):  # an access token: never past its expiry
            try:
                exp = jwt.decode(credential, options={"verify_signature": False}).get("exp")
                until = min(until, time.monotonic() + (float(exp) - time.time()))
            except (jwt.PyJWTError, TypeError, ValueError):
                return
        with self._lock:
            self._known[key] = (until, done.result())
            self._known.move_to_end(key)
            while len(self._known) > self.max_entries:
                self._known.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._known.clear()

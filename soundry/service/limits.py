"""Request limits: login and bearer-auth throttling, requests per minute, per-user task and audio caps,
a global queue cap.

The sliding windows are counted by the ``limits`` library in a shared storage: Redis when
``rate_limit_storage`` (or, failing that, a Redis broker) names one, so every API replica counts
together; this process's memory otherwise. Keys expire with their window, so nothing grows with the
number of names ever tried. Task and queue counts come from the database.

Logins reserve their slot *before* the password is checked: concurrent guesses cannot all slip in
between a check and its count. The per-user counter is cleared by a successful login; the
per-address counter counts every attempt.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from soundry.config import Settings
from soundry.service.errors import ServiceError
from soundry.tasks.models import Task
from soundry.tasks.store import LimitExceeded, TaskStore

log = logging.getLogger(__name__)
NAMESPACE = "soundry"


def storage_uri(settings: Settings) -> str:
    """Where the windows are counted: the setting, else a Redis broker, else this process's memory."""
    if settings.rate_limit_storage:
        return settings.rate_limit_storage
    if settings.broker_url.startswith(("redis://", "rediss://")):
        return settings.broker_url
    return "memory://"


def _item(limit: int, seconds: float) -> RateLimitItem | None:
    return RateLimitItemPerSecond(limit, max(1, math.ceil(seconds))) if limit > 0 else None


def _retry(seconds: float) -> dict:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def _user_key(username: str) -> str:
    """Fixed-size key for any username (long or odd names cost the same)."""
    return hashlib.sha256(username.lower().encode(errors="replace")).hexdigest()[:32]


class Limits:
    def __init__(self, settings: Settings, store: TaskStore):
        self.settings, self.store = settings, store
        self.in_memory = storage_uri(settings).startswith("memory://")  # no I/O: callable on the event loop
        self.storage = storage_from_string(storage_uri(settings), wrap_exceptions=True)
        self.limiter = MovingWindowRateLimiter(self.storage)
        window = settings.login_window_seconds
        self.login_user = _item(settings.login_failures_per_user, window)
        self.login_address = _item(settings.login_attempts_per_address, window)
        self.bearer_address = _item(settings.bearer_failures_per_address, window)
        self.requests = _item(settings.requests_per_minute, 60)

    # -- the shared counters --------------------------------------------------------------------------
    def _call(self, fn, *args):
        try:
            return fn(*args)
        except StorageError as exc:
            log.error("rate-limit storage %s failed: %s", self.storage.__class__.__name__, exc)
            raise ServiceError(503, "unavailable", "the rate-limit storage is unreachable; try again shortly",
                           _retry(5)) from None

    def _wait(self, item: RateLimitItem, *key: str) -> float:
        stats = self._call(self.limiter.get_window_stats, item, NAMESPACE, *key)
        return max(1.0, stats.reset_time - time.time())

    def _refuse(self, item: RateLimitItem, key: tuple[str, ...], message: str) -> ServiceError:
        wait = self._wait(item, *key)
        return ServiceError(429, "rate_limited", f"{message}; try again in {math.ceil(wait)} s", _retry(wait))

    # -- login --------------------------------------------------------------------------------------
    def reserve_login(self, username: str, address: str) -> None:
        """Count this attempt before the password is checked; 429 when the user or address is over."""
        user_key, address_key = ("login-user", _user_key(username)), ("login-address", address)
        if self.login_user and not self._call(self.limiter.test, self.login_user, NAMESPACE, *user_key):
            raise self._refuse(self.login_user, user_key, "too many failed logins for this account")
        if self.login_address and not self._call(self.limiter.hit, self.login_address, NAMESPACE, *address_key):
            raise self._refuse(self.login_address, address_key, "too many login attempts from your address")
        if self.login_user and not self._call(self.limiter.hit, self.login_user, NAMESPACE, *user_key):
            raise self._refuse(self.login_user, user_key, "too many failed logins for this account")

    def login_succeeded(self, username: str) -> None:
        if self.login_user:
            self._call(self.limiter.clear, self.login_user, NAMESPACE, "login-user", _user_key(username))

    # -- bearer credentials ---------------------------------------------------------------------------
    def check_bearer(self, address: str) -> None:
        """429 while the address is over its refused-credential budget (nothing is verified then)."""
        key = ("bearer-address", address)
        if self.bearer_address and not self._call(self.limiter.test, self.bearer_address, NAMESPACE, *key):
            raise self._refuse(self.bearer_address, key, "too many refused credentials from your address")

    def bearer_failed(self, address: str) -> None:
        if self.bearer_address:
            self._call(self.limiter.hit, self.bearer_address, NAMESPACE, "bearer-address", address)

    # -- requests and tasks -------------------------------------------------------------------------
    def check_request(self, user_id: int) -> None:
        key = ("requests", str(user_id))
        if self.requests and not self._call(self.limiter.hit, self.requests, NAMESPACE, *key):
            raise self._refuse(self.requests, key, f"over {self.settings.requests_per_minute} requests per minute")

    def create_task(self, task: Task) -> Task:
        """Store a new task if the global queue and its owner's caps allow it; 503 or 429 (with Retry-After)
        otherwise. The counts and the insert are one transaction (TaskStore.create_within_limits): every
        route that creates tasks comes here, and concurrent creates cannot pass a cap together."""
        s = self.settings
        try:
            return self.store.create_within_limits(task, s.max_active_tasks_per_user,
                                                   s.max_queued_audio_seconds_per_user, s.max_queue)
        except LimitExceeded as exc:
            if exc.kind == "queue":
                raise ServiceError(503, "queue_full", f"the queue is full ({s.max_queue} tasks waiting); try "
                                                      "again later", _retry(30)) from None
            if exc.kind == "tasks":
                raise ServiceError(429, "too_many_tasks", f"you have {exc.count} unfinished tasks; the limit is "
                                                          f"{s.max_active_tasks_per_user}", _retry(10)) from None
            cap = s.max_queued_audio_seconds_per_user
            raise ServiceError(429, "too_much_audio_queued", f"your unfinished tasks ask for {exc.seconds:g} s of "
                                                             f"audio; with this one that would pass the limit of "
                                                             f"{cap:g} s", _retry(10)) from None

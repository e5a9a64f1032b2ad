"""Request limits: login throttling, requests per minute, per-user task and audio caps, a global
queue cap. Counters of the sliding windows live in this process's memory (each API replica counts
on its own); task and queue counts come from the database, so they hold across replicas."""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict, deque

from soundry.api.envelope import ApiError
from soundry.config import Settings
from soundry.tasks.store import TaskStore


class SlidingWindow:
    """At most ``limit`` events per key in any ``window`` seconds (``limit`` 0 = unlimited)."""

    def __init__(self, limit: int, window: float):
        self.limit, self.window = limit, window
        self._events: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def retry_after(self, key: str) -> float | None:
        """Seconds until the key may act again, or None if it may act now."""
        if self.limit <= 0:
            return None
        now = time.monotonic()
        with self._lock:
            q = self._events[key]
            while q and q[0] <= now - self.window:
                q.popleft()
            if len(q) < self.limit:
                return None
            return q[0] + self.window - now

    def add(self, key: str) -> None:
        if self.limit > 0:
            with self._lock:
                self._events[key].append(time.monotonic())

    def hit(self, key: str) -> float | None:
        """Record an event unless over the limit; returns the wait when over it."""
        wait = self.retry_after(key)
        if wait is None:
            self.add(key)
        return wait

    def reset(self, key: str) -> None:
        with self._lock:
            self._events.pop(key, None)


def _retry(seconds: float) -> dict:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


class Limits:
    def __init__(self, settings: Settings, store: TaskStore):
        self.settings, self.store = settings, store
        window = settings.login_window_seconds
        self.login_user = SlidingWindow(settings.login_failures_per_user, window)
        self.login_address = SlidingWindow(settings.login_failures_per_address, window)
        self.requests = SlidingWindow(settings.requests_per_minute, 60.0)

    # -- login --------------------------------------------------------------------------------------
    def check_login(self, username: str, address: str) -> None:
        for counter, key, who in ((self.login_user, username.lower(), "this account"),
                                  (self.login_address, address, "your address")):
            wait = counter.retry_after(key)
            if wait is not None:
                raise ApiError(429, "rate_limited", f"too many failed logins for {who}; try again in "
                                                    f"{math.ceil(wait)} s", _retry(wait))

    def login_failed(self, username: str, address: str) -> None:
        self.login_user.add(username.lower())
        self.login_address.add(address)

    def login_succeeded(self, username: str) -> None:
        self.login_user.reset(username.lower())

    # -- requests and tasks -------------------------------------------------------------------------
    def check_request(self, user_id: int) -> None:
        wait = self.requests.hit(str(user_id))
        if wait is not None:
            raise ApiError(429, "rate_limited", f"over {self.settings.requests_per_minute} requests per minute; "
                                                f"try again in {math.ceil(wait)} s", _retry(wait))

    def check_new_task(self, user_id: int, duration: float) -> None:
        s = self.settings
        if s.max_queue and self.store.count("PENDING") >= s.max_queue:
            raise ApiError(503, "queue_full", f"the queue is full ({s.max_queue} tasks waiting); try again later",
                           _retry(30))
        active, seconds = self.store.active_load(user_id)
        if s.max_active_tasks_per_user and active >= s.max_active_tasks_per_user:
            raise ApiError(429, "too_many_tasks", f"you have {active} unfinished tasks; the limit is "
                                                  f"{s.max_active_tasks_per_user}", _retry(10))
        cap = s.max_queued_audio_seconds_per_user
        if cap and seconds + duration > cap:
            raise ApiError(429, "too_much_audio_queued", f"your unfinished tasks ask for {seconds:g} s of audio; "
                                                         f"with this one that would pass the limit of {cap:g} s",
                           _retry(10))

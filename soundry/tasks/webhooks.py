"""Webhooks: when a task with a ``webhook`` URL completes, fails or is canceled, POST its result there.

The body is the task's result (as ``GET /v1/ai/audio_generation/{id}`` returns it in ``data``),
signed with the owner's webhook secret (``X-Soundry-Signature: t=…,v1=HMAC-SHA256("t.body")``,
secret shown in ``/v1/user/me``). Delivery runs on its own thread with retries and exponential
backoff, so a slow or dead receiver never blocks a worker. Any 2xx answer counts as delivered.
"""

from __future__ import annotations

import heapq
import json
import logging
import threading
import time

import httpx

from soundry.config import Settings
from soundry.signing import webhook_secret, webhook_signature
from soundry.tasks.result import task_payload
from soundry.tasks.store import TaskStore

log = logging.getLogger(__name__)
FINAL = ("COMPLETED", "FAILED", "CANCELED")


class WebhookSender:
    def __init__(self, store: TaskStore, settings: Settings, attempts: int | None = None,
                 backoff: float | None = None, timeout: float = 10.0):
        self.store, self.settings = store, settings
        self.attempts = attempts or settings.webhook_attempts
        self.backoff = settings.webhook_backoff if backoff is None else backoff
        self.timeout = timeout
        self._due: list[tuple[float, int, str]] = []  # (when, attempt, task_id)
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None

    def notify(self, task_id: str, status: str) -> None:
        """Schedule delivery if the task asked for a webhook. Runners call it for COMPLETED and FAILED;
        the API's cancel route for CANCELED (so each final state is announced by one process)."""
        if status not in FINAL:
            return
        task = self.store.get(task_id)
        if task is None or not task.webhook:
            return
        self.store.set_webhook_state(task_id, "pending")
        self._schedule(task_id, 1, 0.0)

    def resume(self) -> int:
        """Schedule deliveries left pending by a previous process (webhooks are at-least-once:
        receivers should treat X-Soundry-Task + X-Soundry-Event as an idempotency key)."""
        ids = self.store.pending_webhooks()
        for task_id in ids:
            self._schedule(task_id, 1, 0.0)
        return len(ids)

    def _schedule(self, task_id: str, attempt: int, delay: float) -> None:
        with self._cv:
            heapq.heappush(self._due, (time.monotonic() + delay, attempt, task_id))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="soundry-webhooks", daemon=True)
                self._thread.start()
            self._cv.notify()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._cv.wait(None if not self._due else self._due[0][0] - time.monotonic())
                _, attempt, task_id = heapq.heappop(self._due)
            try:
                ok, why = self.deliver(task_id)
            except Exception as exc:  # never let one bad task stop deliveries
                ok, why = False, str(exc)
            if ok:
                self.store.set_webhook_state(task_id, "delivered")
            elif attempt < self.attempts:
                self._schedule(task_id, attempt + 1, self.backoff * 2 ** (attempt - 1))
            else:
                log.warning("webhook for task %s failed after %d attempts: %s", task_id, attempt, why)
                self.store.set_webhook_state(task_id, "failed")

    def deliver(self, task_id: str) -> tuple[bool, str]:
        task = self.store.get(task_id)
        if task is None:
            return True, "task gone"
        base = self.settings.public_url or "http://127.0.0.1:8000"
        body = json.dumps(task_payload(task, self.settings, base), separators=(",", ":")).encode()
        secret = webhook_secret(self.settings.secret, task.user_id)
        headers = {"Content-Type": "application/json", "User-Agent": "soundry-webhook",
                   "X-Soundry-Event": f"task.{task.status.lower()}", "X-Soundry-Task": task.id,
                   "X-Soundry-Signature": webhook_signature(secret, body, int(time.time()))}
        try:
            resp = httpx.post(task.webhook, content=body, headers=headers, timeout=self.timeout)
        except httpx.HTTPError as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return resp.is_success, f"HTTP {resp.status_code}"


def attach_webhooks(runner, sender: WebhookSender) -> WebhookSender:
    """Announce the tasks this runner completes or fails (cancels are announced by the API)."""
    runner.hooks.append(lambda task_id, status: status != "CANCELED" and sender.notify(task_id, status))
    return sender

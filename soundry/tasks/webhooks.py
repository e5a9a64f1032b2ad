"""Webhooks: when a task with a ``webhook`` URL completes, fails or is canceled, POST its result there.

The body is the task's result (as ``GET /v1/ai/audio_generation/{id}`` returns it in ``data``),
signed with the owner's webhook secret (``X-Soundry-Signature: t=…,v1=HMAC-SHA256("t.body")``,
secret shown in ``/v1/user/me``). Any 2xx answer counts as delivered; redirects are not followed.

Deliveries run on their own event loop (one thread), at most ``webhook_concurrency`` at once and
``webhook_concurrency_per_user`` of them for one user, so neither a slow receiver nor one user's many
tasks hold up the others. Each attempt has one overall deadline (``webhook_timeout``) for resolving,
connecting, sending and reading the status line — a receiver that trickles bytes is cut off there —
and the response body is never read. Every attempt resolves and checks the address again and connects
to the checked address (see ``webhook_target``). Failures retry with exponential backoff; a URL whose
address is refused is not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time

import httpx

from soundry.config import Settings
from soundry.signing import webhook_secret, webhook_signature
from soundry.tasks.models import Task
from soundry.tasks.result import base_without_request, task_payload
from soundry.tasks.store import TaskStore
from soundry.tasks.webhook_target import WebhookRefused, resolve_target

log = logging.getLogger(__name__)
# httpx logs every request's full URL at INFO; webhook URLs may carry the receiver's tokens.
logging.getLogger("httpx").setLevel(logging.WARNING)
FINAL = ("COMPLETED", "FAILED", "CANCELED")


class _UserSlots:
    """At most ``per_user`` deliveries at once per user (entries exist only while a user has some)."""

    def __init__(self, per_user: int):
        self.per_user = max(1, per_user)
        self._slots: dict[int, list] = {}  # user_id -> [semaphore, holders and waiters]

    @contextlib.asynccontextmanager
    async def hold(self, user_id: int):
        entry = self._slots.setdefault(user_id, [asyncio.Semaphore(self.per_user), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._slots[user_id]


class WebhookSender:
    def __init__(self, store: TaskStore, settings: Settings, attempts: int | None = None,
                 backoff: float | None = None, timeout: float | None = None):
        self.store, self.settings = store, settings
        self.attempts = attempts or settings.webhook_attempts
        self.backoff = settings.webhook_backoff if backoff is None else backoff
        self.timeout = timeout or settings.webhook_timeout
        self.allowed = settings.webhook_networks()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._jobs: set[asyncio.Future] = set()  # scheduled or running attempts (strong references)

    # -- scheduling (any thread) ----------------------------------------------------------------------
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

    def stop(self) -> None:
        """Stop delivering; unfinished deliveries stay pending in the store (``resume`` takes them up)."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None:
            return

        async def shutdown() -> None:
            for job in list(self._jobs):
                job.cancel()
            await asyncio.gather(*self._jobs, return_exceptions=True)
            loop.stop()

        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(shutdown()))
        thread.join(10)
        if not thread.is_alive():
            loop.close()

    def _schedule(self, task_id: str, attempt: int, delay: float) -> None:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._slots = asyncio.Semaphore(max(1, self.settings.webhook_concurrency))
                self._user_slots = _UserSlots(self.settings.webhook_concurrency_per_user)
                self._thread = threading.Thread(target=self._loop.run_forever, name="soundry-webhooks", daemon=True)
                self._thread.start()
            self._loop.call_soon_threadsafe(self._start, task_id, attempt, delay)

    # -- on the delivery loop ---------------------------------------------------------------------------
    def _start(self, task_id: str, attempt: int, delay: float) -> None:
        job = asyncio.ensure_future(self._run(task_id, attempt, delay))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _run(self, task_id: str, attempt: int, delay: float) -> None:
        await asyncio.sleep(delay)
        retry = True
        try:
            task = await asyncio.to_thread(self.store.get, task_id)
            if task is None:
                return
            async with self._user_slots.hold(task.user_id), self._slots:
                ok, why = await self.deliver(task)
        except WebhookRefused as exc:
            ok, why, retry = False, f"refused: {exc}", False
        except Exception as exc:  # noqa: BLE001 - never let one bad task stop deliveries
            log.exception("webhook for task %s: delivery failed", task_id)
            ok, why = False, type(exc).__name__
        if ok:
            await asyncio.to_thread(self.store.set_webhook_state, task_id, "delivered")
        elif retry and attempt < self.attempts:
            self._start(task_id, attempt + 1, self.backoff * 2 ** (attempt - 1))
        else:
            log.warning("webhook for task %s failed after %d attempts: %s", task_id, attempt, why)
            await asyncio.to_thread(self.store.set_webhook_state, task_id, "failed")

    async def deliver(self, task: Task) -> tuple[bool, str]:
        """One attempt: (delivered?, why not). Raises WebhookRefused for an address that may not be used."""
        base = base_without_request(self.settings)
        if isinstance((task.config or {}).get("prediction"), dict):  # created on Replicate's or Cog's API
            from soundry.api.predictions import webhook_body

            payload = webhook_body(task, self.settings, base)  # the prediction, as those APIs send it
        else:
            payload = task_payload(task, self.settings, base)
        body = json.dumps(payload, separators=(",", ":")).encode()
        secret = webhook_secret(self.settings.secret, task.user_id)
        headers = {"Content-Type": "application/json", "User-Agent": "soundry-webhook",
                   "X-Soundry-Event": f"task.{task.status.lower()}", "X-Soundry-Task": task.id,
                   "X-Soundry-Signature": webhook_signature(secret, body, int(time.time()))}
        try:
            async with asyncio.timeout(self.timeout):
                target = await asyncio.to_thread(resolve_target, task.webhook, self.allowed)
                extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else {}
                async with httpx.AsyncClient(trust_env=False, follow_redirects=False,
                                             timeout=self.timeout) as client:
                    request = client.build_request("POST", target.url, content=body, extensions=extensions,
                                                   headers={**headers, "Host": target.host_header})
                    response = await client.send(request, stream=True)  # the status line, not the body
                    await response.aclose()
                    return response.is_success, f"HTTP {response.status_code}"
        except TimeoutError:
            return False, f"no answer within {self.timeout:g} s"
        except httpx.HTTPError as exc:
            return False, type(exc).__name__


def attach_webhooks(runner, sender: WebhookSender) -> WebhookSender:
    """Announce the tasks this runner completes or fails (cancels are announced by the API)."""
    runner.hooks.append(lambda task_id, status: status != "CANCELED" and sender.notify(task_id, status))
    return sender

"""Webhooks: when a task with a ``webhook`` URL completes, fails or is canceled, POST its result there.

The body is the task's result (as ``GET /v1/ai/audio_generation/{id}`` returns it in ``data``),
signed with the owner's webhook secret (``X-Soundry-Signature: t=…,v1=HMAC-SHA256("t.body")``,
secret shown in ``/v1/user/me``). Any 2xx answer counts as delivered; redirects are not followed.

A prediction (a task created on Replicate's or Cog's API) gets the events of its ``webhook_events_filter``,
each body the prediction at that moment: ``start`` when a worker claims it, ``logs`` when a new progress
line appears (at most one ``logs`` delivery queued or in flight per task; newer progress meanwhile is
coalesced into one more), ``output`` when its file is ready, ``completed`` at its end. One task's deliveries
go out one after another, in the order of its events. Only the final event is recorded in the store
(and resumed after a restart); the others live in this process.

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
from collections.abc import Callable

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
FINAL_EVENT = "completed"
LOG_STEP = 10  # a prediction's progress: a new line (a ``logs`` event) each time another 10 % is done
# A wire API's webhook body of a prediction task (Replicate's and Cog's): (task, settings, link base) -> body.
# Given by the layer that knows the wire shapes (the app, the worker command); None: the FlexStack result.
BodyRenderer = Callable[[Task, Settings, str], dict]


def prediction_events(task: Task) -> list[str] | None:
    """The webhook events a prediction asked for; None for a task of soundry's own API (its end only)."""
    wire = (task.config or {}).get("prediction")
    if not isinstance(wire, dict):
        return None
    return list(wire.get("events") or ("start", "output", "logs", "completed"))


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
    def __init__(self, store: TaskStore, settings: Settings, prediction_body: BodyRenderer | None = None,
                 attempts: int | None = None, backoff: float | None = None, timeout: float | None = None):
        self.store, self.settings, self.prediction_body = store, settings, prediction_body
        self.attempts = attempts or settings.webhook_attempts
        self.backoff = settings.webhook_backoff if backoff is None else backoff
        self.timeout = timeout or settings.webhook_timeout
        self.allowed = settings.webhook_networks()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._jobs: set[asyncio.Future] = set()  # scheduled or running deliveries (strong references)
        self._tails: dict[str, asyncio.Future] = {}  # task_id -> its latest delivery (the next one waits for it)
        self._logs: dict[str, bool] = {}  # task_id -> newer progress since its queued/in-flight logs delivery
        self._following: dict[str, int] = {}  # task_id -> progress lines announced, for tasks wanting logs

    # -- scheduling (any thread) ----------------------------------------------------------------------
    def notify(self, task_id: str, status: str) -> None:
        """Schedule delivery if the task asked for a webhook. Runners call it for COMPLETED and FAILED;
        the API's cancel route for CANCELED (so each final state is announced by one process). A prediction
        gets ``output`` (when it succeeded) and ``completed``, as its filter asks."""
        self.forget(task_id)
        if status not in FINAL:
            return
        task = self.store.get(task_id)
        if task is None or not task.webhook:
            return
        events = prediction_events(task)
        if events is not None:
            if task.status == "COMPLETED" and "output" in events:
                self._schedule(task_id, "output", (task, self._payload(task)))
            if FINAL_EVENT not in events:
                return
        self.store.set_webhook_state(task_id, "pending")
        self._schedule(task_id, FINAL_EVENT, None)

    def started(self, task: Task) -> None:
        """A worker claimed ``task`` (PROCESSING): a prediction's ``start`` event, and follow its progress."""
        events = prediction_events(task)
        if not task.webhook or events is None:
            return
        if "logs" in events:
            with self._lock:
                self._following[task.id] = self._lines(task.percent)
        if "start" in events:
            self._schedule(task.id, "start", (task, self._payload(task)))

    def progressed(self, task_id: str, percent: int) -> None:
        """A new percent was stored: a ``logs`` event when it adds a progress line (to tasks that want them)."""
        lines = self._lines(percent)
        with self._lock:
            if self._following.get(task_id, lines) >= lines:
                return
            self._following[task_id] = lines
        self._schedule(task_id, "logs", None)

    def forget(self, task_id: str) -> None:
        """Stop following a task's progress (it ended)."""
        with self._lock:
            self._following.pop(task_id, None)

    @staticmethod
    def _lines(percent: int) -> int:
        return percent // LOG_STEP

    def resume(self) -> int:
        """Schedule deliveries left pending by a previous process (webhooks are at-least-once:
        receivers should treat X-Soundry-Task + X-Soundry-Event as an idempotency key)."""
        ids = self.store.pending_webhooks()
        for task_id in ids:
            self._schedule(task_id, FINAL_EVENT, None)
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

    def _schedule(self, task_id: str, event: str, snapshot: tuple[Task, dict] | None) -> None:
        """Queue one delivery of ``event`` (``snapshot``: the task and body as of the event; None: read then)."""
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._slots = asyncio.Semaphore(max(1, self.settings.webhook_concurrency))
                self._user_slots = _UserSlots(self.settings.webhook_concurrency_per_user)
                self._tails, self._logs = {}, {}  # a stopped loop's jobs are gone
                self._thread = threading.Thread(target=self._loop.run_forever, name="soundry-webhooks", daemon=True)
                self._thread.start()
            self._loop.call_soon_threadsafe(self._enqueue, task_id, event, snapshot)

    def _payload(self, task: Task) -> dict:
        base = base_without_request(self.settings)
        if prediction_events(task) is not None and self.prediction_body is not None:  # Replicate's or Cog's
            return self.prediction_body(task, self.settings, base)  # the prediction, as those APIs send it
        return task_payload(task, self.settings, base)

    # -- on the delivery loop ---------------------------------------------------------------------------
    def _enqueue(self, task_id: str, event: str, snapshot: tuple[Task, dict] | None) -> None:
        if event == "logs":
            if task_id in self._logs:  # one is queued or in flight: it is followed by one more, at most
                self._logs[task_id] = True
                return
            self._logs[task_id] = False
        job = asyncio.ensure_future(self._run(task_id, event, snapshot, self._tails.get(task_id)))
        self._tails[task_id] = job
        self._jobs.add(job)
        job.add_done_callback(lambda done: self._finished(task_id, event, done))

    def _finished(self, task_id: str, event: str, job: asyncio.Future) -> None:
        self._jobs.discard(job)
        if self._tails.get(task_id) is job:
            del self._tails[task_id]
        if event == "logs" and self._logs.pop(task_id, False) and not job.cancelled():
            self._enqueue(task_id, "logs", None)  # newer progress arrived meanwhile: its lines now

    async def _run(self, task_id: str, event: str, snapshot: tuple[Task, dict] | None,
                   previous: asyncio.Future | None) -> None:
        """Deliver one event, after the task's previous one, with retries and backoff."""
        if previous is not None:
            await asyncio.wait([previous])
        why, attempt = "", 0
        for attempt in range(1, self.attempts + 1):
            if attempt > 1:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 2))
            retry = True
            try:
                if snapshot is None:
                    task = await asyncio.to_thread(self.store.get, task_id)
                    if task is None:
                        return
                    if event == "logs":  # its progress as of now; an ended task's lines go with completed
                        if task.status in FINAL:
                            return
                        snapshot = (task, self._payload(task))
                task, payload = snapshot or (task, None)
                async with self._user_slots.hold(task.user_id), self._slots:
                    ok, why = await self.deliver(task, event, payload)
            except WebhookRefused as exc:
                ok, why, retry = False, f"refused: {exc}", False
            except Exception as exc:  # noqa: BLE001 - never let one bad task stop deliveries
                log.exception("webhook for task %s: delivery failed", task_id)
                ok, why = False, type(exc).__name__
            if ok:
                if event == FINAL_EVENT:
                    await asyncio.to_thread(self.store.set_webhook_state, task_id, "delivered")
                return
            if not retry:
                break
        log.warning("webhook %s for task %s failed after %d attempts: %s", event, task_id, attempt, why)
        if event == FINAL_EVENT:
            await asyncio.to_thread(self.store.set_webhook_state, task_id, "failed")

    async def deliver(self, task: Task, event: str = FINAL_EVENT, payload: dict | None = None) -> tuple[bool, str]:
        """One attempt: (delivered?, why not). Raises WebhookRefused for an address that may not be used.
        ``payload``: the body as of the event (default: the task as it is)."""
        prediction = prediction_events(task) is not None
        body = json.dumps(payload if payload is not None else self._payload(task), separators=(",", ":")).encode()
        secret = webhook_secret(self.settings.secret, task.user_id)
        headers = {"Content-Type": "application/json", "User-Agent": "soundry-webhook",
                   "X-Soundry-Event": event if prediction else f"task.{task.status.lower()}", "X-Soundry-Task": task.id,
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
    """Announce the tasks this runner starts, completes or fails (cancels are announced by the API), and the
    progress of predictions that want ``logs``."""
    runner.start_hooks.append(sender.started)
    runner.progress_hooks.append(sender.progressed)
    runner.hooks.append(lambda task_id, status: sender.notify(task_id, status) if status != "CANCELED"
                        else sender.forget(task_id))
    return sender

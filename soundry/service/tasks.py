"""The use cases every wire API shares, written once: create a task from a wire-neutral :class:`TaskSpec`
(validation, the model's capabilities, upload ownership, the limits, the enqueue), cancel one (with its
webhook), get one of the caller's tasks or uploads, store an upload, and wait for a task's end.

Every refusal is a :class:`~soundry.service.errors.ServiceError` naming the field in the service's terms
(``prompt``, ``negative_prompt``, ``webhook``, ``configs.<key>``); each wire API renames it and answers in its
own shape, with the same status. Blocking methods (the database, the broker, the uploads) run on the caller's
thread: an async route calls them on the thread pool.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import BinaryIO

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from soundry.audio.decode import UndecodableAudio
from soundry.audio.encode import check_depth
from soundry.audio.loop import loop_overlap
from soundry.models.catalog import AUTOREGRESSIVE_CONFIGS
from soundry.service.configs import Configs, check_prompt, check_webhook_url
from soundry.service.errors import ServiceError, invalid, not_found
from soundry.storage import StorageError
from soundry.tasks.models import Task, Upload, User
from soundry.tasks.uploads import DecodersBusy, TooManyUploads, too_many_uploads
from soundry.tasks.webhook_target import WebhookRefused, resolve_target

RESOLVE_WAIT = 5.0  # seconds a webhook's host may take to resolve when a task is created


@dataclass
class TaskSpec:
    """A task as a wire API asks for it, before validation. ``configs`` is soundry's configs (a dict, or
    :class:`Configs` a wire API already validated); ``wire`` is what that API needs to answer in its own shape
    later (kept in the task's config under ``"prediction"``); ``task_id`` a client-chosen id (Cog's PUT)."""

    prompt: str
    negative_prompt: str = ""
    configs: Configs | dict = field(default_factory=dict)
    webhook: str = ""
    wire: dict | None = None
    task_id: str | None = None


def _validation_error(exc: ValidationError) -> ServiceError:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
    return invalid(f"configs.{loc}" if loc else "configs", message)


class TaskService:
    def __init__(self, services):
        self.svc = services

    # -- create -----------------------------------------------------------------------------------------
    def validate(self, spec: TaskSpec) -> Configs:
        """The spec's configs, checked without I/O: texts, configs, the model (the live catalog), duration and
        the webhook URL's syntax. Raises ServiceError (422) naming the field."""
        s = self.svc.settings
        for name in ("prompt", "negative_prompt"):
            text = getattr(spec, name)
            if not isinstance(text, str):
                raise invalid(name, "Input should be a valid string")
            try:
                check_prompt(text, name, allow_blank=name == "negative_prompt")
            except ValueError as exc:
                raise invalid(name, str(exc).removeprefix(f"{name} ")) from None
            if len(text) > s.max_prompt_chars:
                raise invalid(name, f"{len(text)} characters; the limit is {s.max_prompt_chars}")
        try:
            configs = spec.configs if isinstance(spec.configs, Configs) else Configs.model_validate(spec.configs)
        except ValidationError as exc:
            raise _validation_error(exc) from None
        model = self.svc.catalog.find(configs.model)
        if model is None:
            raise invalid("configs.model", f"unknown model {configs.model!r}; known models: "
                                           f"{', '.join(self.svc.catalog.names())}")
        if configs.duration > s.max_duration:
            raise invalid("configs.duration", f"at most {s.max_duration:g} seconds")
        try:
            check_depth(configs.output_format, configs.bit_depth)
        except ValueError as exc:
            raise invalid("configs.bit_depth", str(exc).removeprefix(f"bit_depth {configs.bit_depth} ")) from None
        configs = self._for_family(model, configs, spec.negative_prompt)
        if spec.webhook:
            try:
                check_webhook_url(spec.webhook)
            except ValueError as exc:
                raise invalid("webhook", str(exc)) from None
        return configs

    @staticmethod
    def _for_family(model, configs: Configs, negative_prompt: str) -> Configs:
        """What the model's family takes: a config it would not read is refused naming it (never ignored), and a
        diffusion model's steps and guidance default to its own."""
        given = configs.model_fields_set
        if model.kind != "diffusion":
            if configs.steps is not None:
                raise invalid("configs.steps", f"{configs.model} is an autoregressive model (it decodes tokens, "
                                               "not denoising steps); steps apply to Stable Audio models")
            return configs
        for name in AUTOREGRESSIVE_CONFIGS:
            if name in given:
                raise invalid(f"configs.{name}", f"{configs.model} is a diffusion model: it takes steps and "
                                                 f"cfg_coef (guidance), not {name}")
        if configs.duration > model.context:
            raise invalid("configs.duration", f"{configs.model} makes at most {model.context:g} seconds")
        if configs.loop and configs.duration + loop_overlap(configs.duration) > model.context:
            raise invalid("configs.loop", f"a loop is generated a little past its end, and {configs.model} makes at "
                                          f"most {model.context:g} seconds: ask for a shorter duration")
        configs = configs.model_copy(update={
            "steps": configs.steps if configs.steps is not None else model.steps,
            "cfg_coef": configs.cfg_coef if "cfg_coef" in given else model.guidance})
        if negative_prompt and configs.cfg_coef <= 1.0:
            raise invalid("negative_prompt", f"{configs.model} runs without guidance at cfg_coef "
                                             f"{configs.cfg_coef:g}, where a negative prompt changes nothing; set "
                                             "cfg_coef above 1 to use one")
        return configs

    async def check_webhook(self, url: str) -> None:
        """422 unless the webhook's host resolves to addresses it may reach (public, or operator-allowed)."""
        from starlette.concurrency import run_in_threadpool

        try:
            await asyncio.wait_for(run_in_threadpool(resolve_target, url, self.svc.settings.webhook_networks()),
                                   RESOLVE_WAIT)
        except WebhookRefused as exc:
            raise invalid("webhook", str(exc)) from None
        except TimeoutError:
            raise invalid("webhook", f"its host did not resolve within {RESOLVE_WAIT:g} s") from None

    def check_inputs(self, user: User, cfg: Configs) -> None:
        """Refuse (404/422, naming the field) what the task's model cannot do with its configs (a melody, the
        MBD decoder) and an ``input_audio`` or ``melody`` upload the task could not use."""
        spec = self.svc.catalog.get(cfg.model)
        if spec.kind == "autoregressive" and cfg.decoder not in spec.decoders:
            raise invalid("configs.decoder", f"{cfg.model} is not a MusicGen model; MultiBand Diffusion decodes "
                                             "MusicGen's tokens only (use encodec)")
        if cfg.melody is not None:
            if not spec.melody:
                melody_models = [n for n, m in self.svc.catalog.specs().items() if m.melody]
                raise invalid("configs.melody", f"{cfg.model} is not conditioned on a melody; use one of "
                                                f"{', '.join(melody_models)}")
            if cfg.input_audio is not None:
                raise invalid("configs.melody", "a melody and an audio prompt to continue (configs.input_audio) "
                                                "cannot be combined")
            self.own_upload(user, cfg.melody, "configs.melody")
        if cfg.input_audio is None:
            if "continuation_start" in cfg.model_fields_set or cfg.continuation_end is not None:  # as the schema says
                raise invalid("configs.continuation_start", "continuation_start/end need configs.input_audio")
            return
        up = self.own_upload(user, cfg.input_audio, "configs.input_audio")
        end = up.duration if cfg.continuation_end is None else cfg.continuation_end
        if end > up.duration + 1e-3:
            raise invalid("configs.continuation_end", f"the clip is {up.duration:.3f} s long")
        if cfg.continuation_start >= end:
            raise invalid("configs.continuation_start", "it must be before continuation_end")
        prompt = end - cfg.continuation_start
        context = spec.facts.context  # a prompt must be shorter
        if prompt >= min(cfg.duration, context):
            raise invalid("configs.duration",
                          f"the audio prompt is {prompt:.2f} s; the total duration must be longer and the prompt "
                          f"shorter than the model's {context:g} s context (use continuation_start/"
                          "continuation_end to take part of the clip)")

    def create(self, user: User, spec: TaskSpec, configs: Configs | None = None) -> Task:
        """Validate, check the inputs, store within the caps (429/503) and enqueue. Blocking. The webhook's
        address is checked by :meth:`submit` (it resolves a host name)."""
        configs = configs or self.validate(spec)
        self.check_inputs(user, configs)
        config = configs.model_dump()
        if self.svc.catalog.get(configs.model).kind == "diffusion":  # what it does not read is not its config
            config = {k: v for k, v in config.items() if k not in AUTOREGRESSIVE_CONFIGS}
        if spec.wire is not None:
            config["prediction"] = spec.wire
        task = Task(user_id=user.id, prompt=spec.prompt, negative_prompt=spec.negative_prompt, config=config,
                    model=configs.model, webhook=spec.webhook or "")
        if spec.task_id is not None:
            task.id = spec.task_id
        task = self.svc.limits.create_task(task)
        self.svc.queue.enqueue(task.id, task.model)
        return task

    async def submit(self, user: User, spec: TaskSpec) -> Task:
        """:meth:`create` from an async route: validation first, the webhook's host resolved, then the
        database and the broker on the thread pool (never on the event loop)."""
        from starlette.concurrency import run_in_threadpool

        configs = self.validate(spec)
        if spec.webhook:
            await self.check_webhook(spec.webhook)
        return await run_in_threadpool(self.create, user, spec, configs)

    async def submit_once(self, user: User, spec: TaskSpec) -> tuple[Task, bool]:
        """The task of ``spec.task_id`` (a client-chosen id, one per user): created now, or the one that exists
        (also when the same id is sent twice at once). Returns (task, created now?)."""
        from starlette.concurrency import run_in_threadpool

        old = await run_in_threadpool(self.svc.store.get, spec.task_id, user.id)
        if old is not None:
            return old, False
        try:
            return await self.submit(user, spec), True
        except IntegrityError:  # the same id at once: the other one made it
            return await run_in_threadpool(self.svc.store.get, spec.task_id, user.id), False

    # -- read and cancel ----------------------------------------------------------------------------------
    def own_task(self, user: User, task_id: str, what: str = "task") -> Task:
        """One of the caller's tasks; 404 (naming ``what``) for none, or another user's."""
        task = self.svc.store.get(task_id, user.id) if len(task_id) <= 64 else None
        if task is None:
            raise not_found(what, f"no {what} {task_id} of yours" if what != "task" else
                            f"no task {task_id} for this user")
        return task

    def cancel(self, user: User, task_id: str, what: str = "task") -> tuple[Task, bool]:
        """Cancel one of the caller's tasks that has not ended, announced to its webhook. Returns the task as it
        is now and whether this call canceled it (False: it had already ended)."""
        task = self.own_task(user, task_id, what)
        return self.cancel_task(task.id)

    def cancel_task(self, task_id: str) -> tuple[Task | None, bool]:
        """Cancel a task (whose owner the caller already checked); see :meth:`cancel`."""
        canceled = self.svc.store.cancel(task_id)
        if canceled:
            self.svc.queue.cancel(task_id)
            if self.svc.webhooks is not None:
                self.svc.webhooks.notify(task_id, "CANCELED")
        return self.svc.store.get(task_id), canceled

    async def wait(self, task_id: str, timeout: float | None = None, gone: asyncio.Event | None = None
                   ) -> Task | None:
        """The task once COMPLETED, FAILED or CANCELED (or missing); None when ``timeout`` seconds pass or
        ``gone`` is set (the client left) first. Event-driven (``soundry.tasks.watch``): no database read per
        waiter while it waits."""
        end = asyncio.ensure_future(self.svc.watch.wait_end(task_id, timeout))
        if gone is None:
            return await end
        left = asyncio.ensure_future(gone.wait())
        try:
            await asyncio.wait({end, left}, return_when=asyncio.FIRST_COMPLETED)
            return end.result() if end.done() else None
        finally:
            for pending in (end, left):
                if not pending.done():
                    pending.cancel()

    # -- uploads --------------------------------------------------------------------------------------
    def own_upload(self, user: User, upload_id: str, field: str | None = None, what: str = "upload") -> Upload:
        """One of the caller's uploads; 404 (naming ``field`` when a task's config names it) otherwise."""
        up = self.svc.uploads.get(upload_id, user.id)
        if up is None:
            message = f"no upload {upload_id} for this user" if what == "upload" else f"no {what} {upload_id} of yours"
            raise not_found(what, message, field)
        return up

    def store_upload(self, user: User, filename: str, src: BinaryIO, size: int, field: str = "file") -> Upload:
        """Decode and keep a clip as the caller's upload (blocking); refusals name ``field`` (the form field)."""
        s = self.svc.settings
        try:
            check_prompt(filename, "the file name", allow_blank=True)  # it is shown back, as text
        except ValueError as exc:
            raise invalid(field, str(exc)) from None
        try:
            return self.svc.uploads.create(user.id, filename, src, size, s.max_upload_seconds, s.max_uploads_per_user)
        except UndecodableAudio as exc:
            raise invalid(field, str(exc), code="invalid_audio") from None
        except TooManyUploads as exc:
            raise ServiceError(429, "too_many_uploads", str(exc)) from None
        except DecodersBusy as exc:
            raise ServiceError(503, "busy", str(exc), {"Retry-After": "5"}) from None
        except (StorageError, OSError):  # a full disk among them: said without its text (paths stay private)
            raise ServiceError(503, "storage_unavailable", "the file could not be stored; try again later",
                               {"Retry-After": "30"}) from None

    def check_upload_room(self, user: User) -> None:
        """429 early (before the body is read) when the caller already keeps as many uploads as allowed."""
        cap = self.svc.settings.max_uploads_per_user
        if self.svc.uploads.count(user.id) >= cap:
            raise ServiceError(429, "too_many_uploads", too_many_uploads(cap))

    def delete_upload(self, user: User, upload_id: str, what: str = "upload") -> Upload:
        up = self.own_upload(user, upload_id, what=what)
        self.svc.uploads.delete(up.id, user.id)
        return up

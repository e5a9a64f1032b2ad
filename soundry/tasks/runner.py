"""Executing one task, idempotently: claim it, generate, encode, store, mark it done.

Used by the embedded worker and by Celery workers alike. A task is claimed while PENDING, or
while PROCESSING under a lease that lapsed (its worker died); the worker renews the leases of its
tasks every few seconds. A redelivered message for a task that another live worker holds waits
until that worker finishes (then it is skipped) or its lease lapses (then it takes the task over).
Only the holder can complete a task, so it completes once. The audio file is written before the
task says COMPLETED. A task with ``decoder: mbd`` has its tokens decoded again by MultiBand Diffusion here, on
the task's own thread, once the engine is done with it (the engine's decode loop never waits for it).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import torch

from soundry.audio import encode, normalize
from soundry.audio.loop import loop_overlap, make_loop
from soundry.engine import GenerationCanceled, GenerationRequest
from soundry.storage import Storage, StorageError
from soundry.tasks.engines import EngineManager, ModelUnavailable
from soundry.tasks.live_audio import LiveAudio
from soundry.tasks.result import decoder_of
from soundry.tasks.store import TaskStore
from soundry.tasks.uploads import UploadStore

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


class TaskRunner:
    def __init__(self, store: TaskStore, storage: Storage, engines: EngineManager, worker_id: str | None = None,
                 progress_interval: float = 0.5, lease_seconds: float = 30.0, live: LiveAudio | None = None,
                 max_attempts: int = 3):
        self.store, self.storage, self.engines = store, storage, engines
        self.max_attempts = max_attempts  # starts of one task before it fails (each lost start: a dead process)
        self.uploads = UploadStore(store, storage)
        self.worker_id, self.progress_interval = worker_id or new_worker_id(), progress_interval
        self.lease_seconds = lease_seconds
        self.live = live  # tasks' audio while it is generated, for listeners in this process
        self.hooks: list = []  # callables(task_id, status) after a task ends (webhooks)
        self.start_hooks: list = []  # callables(task) once this worker has claimed a task to run it
        self.progress_hooks: list = []  # callables(task_id, percent) after a new percent is written
        self._active: dict[str, list] = {}  # task_id -> [engine, percent to write or None]
        self._lock = threading.Lock()
        # one MultiBand Diffusion decode at a time in this process: each already batches its bands and halves
        # over every core (or the GPU); several at once would only share them and hold more memory
        self._diffusing = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> TaskRunner:
        """Start the housekeeping thread: progress writes, cancel checks, lease renewal."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._housekeeping, name="soundry-runner", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop housekeeping and hand this worker's unfinished tasks back for the next start."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            if n := self.store.release(self.worker_id):
                log.info("handed %d unfinished tasks back to the queue", n)
        except Exception:
            log.exception("handing unfinished tasks back failed (their leases will lapse)")

    def _housekeeping(self) -> None:
        last_renewal = time.monotonic()
        while not self._stop.wait(self.progress_interval):
            try:
                self._sync_progress()
                if time.monotonic() - last_renewal >= self.lease_seconds / 3:
                    self.store.renew_leases(self.worker_id, self.lease_seconds)
                    last_renewal = time.monotonic()
            except Exception:
                log.exception("runner housekeeping failed")

    def _sync_progress(self) -> None:
        """Write new percents of this process's tasks and stop the ones canceled (or taken over)."""
        with self._lock:
            active = {tid: (entry[0], entry[1]) for tid, entry in self._active.items()}
            for entry in self._active.values():
                entry[1] = None
        if not active:
            return
        for task_id, (status, worker) in self.store.owners(list(active)).items():
            engine, percent = active[task_id]
            if status == "CANCELED" or (status == "PROCESSING" and worker != self.worker_id):
                engine.cancel(task_id)
            elif percent is not None:
                self.store.set_percent(task_id, percent, self.worker_id)
                self._call(self.progress_hooks, task_id, percent)

    def _progress(self, task_id: str):
        def report(done: int, total: int) -> None:
            with self._lock:
                if task_id in self._active:
                    self._active[task_id][1] = min(99, int(100 * done / max(1, total)))
        return report

    def _live_channel(self, task_id: str, engine, request: GenerationRequest, loop: bool):
        """The task's live channel, or None: a loop's head changes once its tail exists, so it is not streamed."""
        if self.live is None or loop:
            return None
        rate = engine.model.sample_rate
        samples = getattr(engine.model, "samples", None)  # a diffusion model cuts its decode its own way
        total = samples(request.duration) if samples is not None else int(round(request.duration * rate))
        return self.live.open(task_id, rate, total)

    def claim(self, task_id: str):
        """Claim the task, waiting while another live worker holds it; None once it is finished. A task
        that used up its attempts comes back FAILED (the claim failed it)."""
        while True:
            task = self.store.claim(task_id, self.worker_id, self.lease_seconds, self.max_attempts)
            if task is not None:
                return task
            current = self.store.get(task_id)
            if current is None or current.status != "PROCESSING" or self._stop.is_set():
                return None
            self._stop.wait(min(2.0, self.lease_seconds / 3))  # held by a live worker: its lease decides

    def execute(self, task_id: str) -> str:
        """Run a task to its end; returns its final status (or 'SKIPPED' if not claimable)."""
        task = self.claim(task_id)
        if task is None:
            return "SKIPPED"
        if task.status == "FAILED":
            log.error("task %s failed: %s", task_id, task.error)
            status = "FAILED"
        else:
            self._call(self.start_hooks, task)
            try:
                status = self._run(task)
            finally:
                if self.live is not None:
                    self.live.close(task_id)
            if status != "COMPLETED" and not self._stop.is_set():  # (a clean stop's release gives starts back)
                try:
                    if self.store.uncount_lost_start(task_id, self.worker_id):
                        log.warning("task %s: this worker's lease lapsed and another took it over; this start "
                                    "is not counted as a crash", task_id)
                except Exception:
                    log.exception("task %s: giving back a lost start failed", task_id)
        self._call(self.hooks, task_id, status)
        return status

    @staticmethod
    def _call(hooks: list, *args) -> None:
        for hook in hooks:
            try:
                hook(*args)
            except Exception:
                log.exception("task hook %r failed", hook)

    UPLOADS = {"input_audio": "input audio", "melody": "melody"}  # configs fields naming an upload -> in a sentence

    def _read_uploads(self, task, request: GenerationRequest) -> str | None:
        """Put the task's uploads into ``request``: the part of ``input_audio`` to continue, the whole ``melody``.
        Returns why the task fails (a sentence), or None."""
        cfg = task.config
        for field, what in self.UPLOADS.items():
            if not cfg.get(field):
                continue
            start, end = ((float(cfg.get("continuation_start") or 0.0), cfg.get("continuation_end"))
                          if field == "input_audio" else (0.0, None))
            try:
                audio, rate = self.uploads.read(cfg[field], task.user_id, start, end)
            except LookupError:
                return f"{what} {cfg[field]} no longer exists (deleted or expired)"
            except Exception:
                log.exception("task %s: reading its %s failed", task.id, what)
                return f"its {what} could not be read"
            if field == "input_audio":
                request.prompt_audio, request.prompt_sample_rate = torch.from_numpy(audio), rate
            else:
                request.melody, request.melody_sample_rate = torch.from_numpy(audio), rate
        return None

    def _diffuse(self, task_id: str, engine, result, seed: int):
        """The result's tokens decoded by MultiBand Diffusion (seeded with the task's seed), cut to the length
        of the engine's EnCodec decode: [C, N] float32. Raises ``_Stopped`` once the task is no longer this
        worker's to finish (canceled, or taken over), checked after every U-Net pass."""
        mbd = self.engines.mbd(engine)

        def still_ours(_done: int, _total: int) -> None:
            current = self.store.get(task_id)
            if current is None or current.status != "PROCESSING" or current.worker != self.worker_id:
                raise _Stopped(task_id)

        with self._diffusing:
            audio = mbd.tokens_to_wav(result.tokens[None], seed=int(seed), progress=still_ours)[0]
        return audio[..., :result.audio.shape[-1]].numpy()

    def _run(self, task) -> str:
        task_id, cfg, me = task.id, task.config, self.worker_id
        try:
            engine = self.engines.get(task.model)
        except ModelUnavailable as exc:
            self.store.fail(task_id, str(exc), me)
            return "FAILED"
        duration = float(cfg["duration"])
        loop = bool(cfg.get("loop"))  # generate past the end, then crossfade that tail into the head
        # a diffusion task's config has no sampling settings (it reads none): the request's defaults stand
        sampling = {k: cast(cfg[k]) for k, cast in (("top_k", int), ("top_p", float), ("temperature", float))
                    if k in cfg}
        request = GenerationRequest(
            prompt=task.prompt, duration=duration + loop_overlap(duration) if loop else duration, **sampling,
            cfg_coef=float(cfg["cfg_coef"]), seed=cfg.get("seed"), negative_prompt=task.negative_prompt or None,
            steps=cfg.get("steps"), id=task_id)
        refused = self._read_uploads(task, request)
        if refused:
            self.store.fail(task_id, refused, me)
            return "FAILED"
        with self._lock:
            self._active[task_id] = [engine, None]
        try:
            try:  # submit turns an audio prompt into codes and a melody into chroma (seconds of CPU) on this thread
                future = engine.submit(request, self._progress(task_id), sink=self._live_channel(task_id, engine,
                                                                                               request, loop))
            except ValueError as exc:  # what the model cannot take (a melody on a text-only model, ...): a sentence
                self.store.fail(task_id, str(exc), me)
                return "FAILED"
            result = future.result()
        except GenerationCanceled:
            return "CANCELED"  # the store already says so (or another worker took the task over)
        except Exception as exc:
            log.exception("task %s failed", task_id)
            self.store.fail(task_id, f"generation failed ({type(exc).__name__}; the server log has details)", me)
            return "FAILED"
        finally:
            with self._lock:
                self._active.pop(task_id, None)
        if decoder_of(task) == "mbd":
            try:
                audio = self._diffuse(task_id, engine, result, request.seed)
            except _Stopped:
                return self._not_ours(task_id)
            except ModelUnavailable as exc:
                self.store.fail(task_id, str(exc), me)
                return "FAILED"
            except Exception as exc:
                log.exception("task %s: MultiBand Diffusion failed", task_id)
                self.store.fail(task_id, f"decoding with MultiBand Diffusion failed ({type(exc).__name__}; the "
                                         "server log has details)", me)
                return "FAILED"
        else:
            audio = result.audio.numpy()
        try:
            if loop:
                audio = make_loop(audio, int(round(duration * result.sample_rate)))
            audio = normalize(audio, result.sample_rate, cfg.get("normalization", "loudness"),
                              float(cfg.get("target_lufs", -14.0)))
            encoded = encode(audio, result.sample_rate, cfg.get("output_format", "wav"), int(cfg.get("bit_depth", 16)))
            key = f"{task.user_id}/{task_id}-{task.attempts}.{encoded.extension}"
            self.storage.put(key, encoded.data, encoded.content_type)
        except Exception as exc:  # the log has the details (paths, buckets); the user gets the cause only
            log.exception("task %s: saving audio failed", task_id)
            reason = exc.reason if isinstance(exc, StorageError) else "internal error"
            self.store.fail(task_id, f"saving the audio failed: {reason}", me)
            return "FAILED"
        done = self.store.complete(task_id, key, encoded.extension, encoded.sample_rate,
                                   audio.shape[-1] / result.sample_rate, request.seed, me)
        if not done:  # canceled while encoding, or taken over: this attempt's file is never served
            self.storage.delete(key)
            return self._not_ours(task_id)
        return "COMPLETED"

    def _not_ours(self, task_id: str) -> str:
        """What became of a task this worker can no longer finish: CANCELED, or SKIPPED (another took it over)."""
        current = self.store.get(task_id)
        return "CANCELED" if current is None or current.status == "CANCELED" else "SKIPPED"


class _Stopped(Exception):
    """A MultiBand Diffusion decode stopped: its task was canceled or taken over meanwhile."""

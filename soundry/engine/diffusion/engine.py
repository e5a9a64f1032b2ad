"""The diffusion engine: one model, one denoising loop thread, requests joining and leaving between steps.

The same public surface as the autoregressive ``soundry.engine.scheduler.Engine`` (``start``, ``stop``,
``submit(request, progress, sink) -> Future[GenerationResult]``, ``cancel``, ``queued``, ``active``, ``stats``,
``compile_state``), so the task runner can hold either. Each request is a ``DiffusionJob`` at its own step of its own
schedule with its own noise source (its seed), so its audio is its result alone whatever shares the batch, up to
the float rounding of a batched DiT call. Progress is reported per step (``progress(step, steps)``); a cancel takes
effect between steps; finished latents are decoded by the autoencoder on a separate thread (and, on a GPU, its own
stream), never between denoising steps. ``GenerationResult.tokens`` holds the final latents [C, L] (float).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from soundry.engine.codec_stream import CodecStream
from soundry.engine.diffusion.batch import DiffusionBatch, DiffusionJob, Progress, make_job
from soundry.engine.request import GenerationCanceled, GenerationRequest, GenerationResult, record_seed
from soundry.engine.scheduler import EngineStats, _safe
from soundry.engine.streaming import AudioSink

log = logging.getLogger(__name__)
MAX_STEPS = 1000


class DiffusionEngine:
    """Continuous batching of denoising steps over one loaded ``StableAudioModel``. ``max_batch`` bounds the
    requests stepped together (a guided request takes two DiT rows)."""

    def __init__(self, model, max_batch: int = 16, idle_wait: float = 0.5):
        self.model, self.max_batch, self.idle_wait = model, max_batch, idle_wait
        self.stats = EngineStats()
        self._lock = threading.Condition()
        self._waiting: deque[tuple[GenerationRequest, Future, Progress | None]] = deque()
        self._cancel: set[str] = set()
        self._futures: dict[str, Future] = {}
        self._sinks: dict[str, AudioSink] = {}
        self._submitted: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._stop = False
        self._batch = DiffusionBatch(model)
        self._decoder: ThreadPoolExecutor | None = None
        self._stream: CodecStream | None = None

    # -- public API --------------------------------------------------------------------------------
    def start(self) -> DiffusionEngine:
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._run, name=f"soundry-diffusion-{self.model.name}",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, request: GenerationRequest, progress: Progress | None = None,
               sink: AudioSink | None = None) -> Future:
        """Queue a request; its Future gives the GenerationResult. What the model cannot take (a duration beyond
        its longest, audio inputs, steps out of range) raises ValueError here. With ``sink``, the audio is pushed
        into it once it exists (this family has no audio before its last step)."""
        self.model.check_duration(request.duration)
        steps = self.model.default_steps if request.steps is None else int(request.steps)
        if not 1 <= steps <= MAX_STEPS:
            raise ValueError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")
        if any(x is not None for x in (request.prompt_codes, request.prompt_audio, request.melody,
                                       request.melody_chroma)):
            raise ValueError(f"{self.model.name} generates from text only (no audio prompt or melody)")
        request.steps = steps
        record_seed(request)
        fut: Future = Future()
        with self._lock:
            if self._stop and self._thread is not None:
                raise RuntimeError("the engine is stopping")
            self._futures[request.id] = fut
            if sink is not None:
                self._sinks[request.id] = sink
            self._submitted[request.id] = time.perf_counter()
            self._waiting.append((request, fut, progress))
            self._lock.notify_all()
        self.start()
        return fut

    def cancel(self, request_id: str) -> bool:
        """Cancel a waiting or running request (between steps); True if it was known and not finished."""
        with self._lock:
            fut = self._futures.get(request_id)
            if fut is None or fut.done():
                return False
            for item in list(self._waiting):
                if item[0].id == request_id:
                    self._waiting.remove(item)
                    self._finish(request_id, GenerationCanceled(request_id))
                    return True
            self._cancel.add(request_id)
            self._lock.notify_all()
        return True

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._batch.jobs)

    @property
    def compile_state(self) -> str:
        return "off"

    # -- the loop ------------------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        self._decoder = ThreadPoolExecutor(1, thread_name_prefix="soundry-vae")
        device = self.model.device
        self._stream = CodecStream(device)
        scope = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
        crash: Exception | None = None
        try:
            with scope:
                self._loop()
        except Exception as exc:
            crash = exc
            log.exception("the diffusion engine loop crashed")
        finally:
            with self._lock:
                self._stop = True
                waiting, self._waiting = list(self._waiting), deque()
            for request, _fut, _progress in waiting:
                self._finish(request.id, RuntimeError("engine stopped"))
            for job in list(self._batch.jobs):
                self._batch.remove(job)
                self._finish(job.id, RuntimeError("engine stopped"))
            self._decoder.shutdown(wait=True)
            with self._lock:
                orphans = list(self._futures)
            for request_id in orphans:
                self._finish(request_id, crash or RuntimeError("engine stopped"))

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stop and not self._waiting and not self._batch.jobs:
                    self._lock.wait(self.idle_wait)
                if self._stop:
                    return
                cancels, self._cancel = self._cancel, set()
                room = max(0, self.max_batch - len(self._batch.jobs))
                admit = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
            for job in [j for j in self._batch.jobs if j.id in cancels]:
                self._batch.remove(job)
                self._finish(job.id, GenerationCanceled(job.id))
            for request, _fut, progress in admit:
                self._admit(request, progress)
            if self._batch.jobs:
                self._step()

    def _admit(self, req: GenerationRequest, progress: Progress | None) -> None:
        try:
            job = make_job(self.model, req.id, req.prompt, req.duration, float(req.cfg_coef), int(req.steps),
                           int(req.seed), req.negative_prompt, _safe(progress))
        except Exception as exc:  # e.g. the text encoder failed: fail just this request
            log.exception("conditioning failed")
            self._finish(req.id, exc)
            return
        self._batch.admit(job)

    def _step(self) -> None:
        n = len(self._batch.jobs)
        t0 = time.perf_counter()
        try:
            finished = self._batch.step()
        except Exception as exc:  # a broken step fails everyone in it; the engine keeps serving
            log.exception("denoising step failed")
            for job in list(self._batch.jobs):
                self._batch.remove(job)
                self._finish(job.id, exc)
            return
        st = self.stats
        st.steps += 1
        st.step_seconds += time.perf_counter() - t0
        st.rows_stepped += n
        st.last_batch_size = n
        st.max_batch_size = max(st.max_batch_size, n)
        st.batch_sizes[n] = st.batch_sizes.get(n, 0) + 1
        for job in finished:
            ready = self._stream.handoff(job.x)
            try:
                self._decoder.submit(self._stream.run, ready, self._decode, job)
            except RuntimeError:  # the pool refuses work at interpreter exit: decode here, the request is answered
                self._stream.run(ready, self._decode, job)

    def _decode(self, job: DiffusionJob) -> None:
        try:
            audio = self.model.decode(job.x, job.duration)[0].cpu()
            result = GenerationResult(job.x[0].cpu(), audio, self.model.sample_rate)
        except Exception as exc:
            log.exception("autoencoder decode failed")
            self._finish(job.id, exc)
            return
        with self._lock:
            sink = self._sinks.pop(job.id, None)
            started = self._submitted.get(job.id)
        if sink is not None:
            try:
                sink.push(audio.numpy())
            except Exception:  # a stream must never break generation; its listeners get the final file
                log.exception("streaming the finished audio failed")
        self.stats.completed += 1
        self.stats.audio_seconds += audio.shape[-1] / self.model.sample_rate
        if started is not None:
            self.stats.generation_seconds += time.perf_counter() - started
        self._finish(job.id, result=result)

    def _finish(self, request_id: str, exc: BaseException | None = None,
                result: GenerationResult | None = None) -> None:
        """Answer a request's future (result, cancel or failure) and forget it."""
        with self._lock:
            fut = self._futures.pop(request_id, None)
            self._sinks.pop(request_id, None)
            self._submitted.pop(request_id, None)
        if isinstance(exc, GenerationCanceled):
            self.stats.canceled += 1
        elif exc is not None:
            self.stats.failed += 1
        if fut is None or fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

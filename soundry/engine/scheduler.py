"""The engine: one model, one decode loop thread, requests joining and leaving between steps.

``submit`` returns a Future; the loop admits waiting requests into free slots (their T5 encoding
batched), runs one decode step for everyone, retires finished or canceled requests, and hands
finished codes to a separate thread for codec decoding, so decoding never stalls the LM.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from soundry.engine.batch import DecodeBatch, Job
from soundry.engine.chroma_cache import ChromaCache
from soundry.engine.codec_stream import CodecStream
from soundry.engine.jobs import job_windows, make_job, prepare_melody
from soundry.engine.memory import KVCacheTooLarge, fit_slots
from soundry.engine.request import GenerationCanceled, GenerationRequest, GenerationResult
from soundry.engine.step_timer import StepTimer
from soundry.engine.streaming import AudioSink, IncrementalDecoder, StreamTap
from soundry.models.audiocraft.conditioners.melody import SeparationCanceled, cancellable

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


class EngineStats:
    """Counters the metrics endpoint reads (plain numbers; no locking needed for monotonic ints)."""

    def __init__(self) -> None:
        self.steps = 0
        self.step_seconds = 0.0  # device time of the steps (engine.step_timer; on a GPU it lags a few steps)
        self.rows_stepped = 0  # sum of batch sizes over steps
        self.last_batch_size = 0
        self.max_batch_size = 0
        self.completed = 0
        self.failed = 0
        self.canceled = 0
        self.audio_seconds = 0.0
        self.generation_seconds = 0.0  # wall time from submit to audio, summed over completed requests
        self.batch_sizes: dict[int, int] = {}  # requests in the batch -> steps taken at that size

    @property
    def mean_batch_size(self) -> float:
        return self.rows_stepped / self.steps if self.steps else 0.0


class Engine:
    """Continuous-batching generation over one loaded ``AudioModel``."""

    def __init__(self, model, max_batch: int = 16, idle_wait: float = 0.5, static_steps: bool | None = None,
                 compile: bool = False, compile_cache: Path | str | None = None, kv_cache_memory: float = 0.9,
                 rng: str = "generator", attention: str = "masked", separations: threading.Semaphore | None = None):
        """``separations``: the melody stem separations that may run at once (one semaphore shared by the
        process's engines: ``EngineManager``); default one at a time for this engine."""
        self.model = model
        self.separations = separations or threading.BoundedSemaphore(1)
        self._preparing: dict[str, threading.Event] = {}  # request id -> its cancel, while submit separates
        self.max_batch = max_batch
        # on a GPU, at most this fraction of the free memory at start goes to the KV cache (engine.memory)
        self.kv_cache_memory = kv_cache_memory
        if rng not in ("generator", "counter") or attention not in ("masked", "lengths", "per_request"):
            raise ValueError(f"rng must be generator or counter (got {rng!r}), attention masked, lengths or "
                             f"per_request (got {attention!r})")
        self.rng, self.attention = rng, attention  # DecodeBatch's (see there)
        self.idle_wait = idle_wait
        # bucketed static-shape steps (CUDA graphs on a GPU); default: on for CUDA, off on the CPU
        self.static_steps = static_steps
        # CPU, fp32 or bf16: compile the step in the background (soundry.engine.compiled_steps), decoding
        # eagerly until its graphs are ready; inductor's caches go to compile_cache
        self.compile, self.compile_cache = compile, compile_cache
        self.stats = EngineStats()
        self._lock = threading.Condition()
        self._waiting: deque[tuple[GenerationRequest, Future, Progress | None]] = deque()
        self._cancel: set[str] = set()
        self._futures: dict[str, Future] = {}
        self._submitted: dict[str, float] = {}  # request id -> submit time (for generation seconds)
        self._thread: threading.Thread | None = None
        self._stop = False
        self._crash: Exception | None = None  # why the loop ended, if it crashed
        self._codec: ThreadPoolExecutor | None = None  # codec decoding beside the loop; owned by the loop
        self._codec_stream: CodecStream | None = None  # on a GPU, the codec thread's own CUDA stream
        self._timer = StepTimer("cpu")  # the decode steps' time (the loop makes one for its device)
        self._batch: DecodeBatch | None = None
        self._taps: dict[str, StreamTap] = {}  # request id -> its audio stream (requests submitted with a sink)
        self.chroma_cache = ChromaCache()  # melody models: chroma already computed (engine.chroma_cache)

    # -- public API --------------------------------------------------------------------------------
    def start(self) -> Engine:
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._run, name=f"soundry-engine-{self.model.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)  # the loop shuts the codec pool down when it exits
            self._thread = None

    def submit(self, request: GenerationRequest, progress: Progress | None = None,
               sink: AudioSink | None = None) -> Future:
        """Queue a request; its Future gives the GenerationResult. With ``sink``, the audio also
        flows into it while it is generated (whenever ``sink.wanted``; see engine.streaming)."""
        if request.duration <= 0:
            raise ValueError(f"duration must be > 0, got {request.duration}")
        if request.prompt_audio is not None and request.prompt_codes is None:
            # encoded here, on the caller's thread, so the decode loop never waits for the codec's encoder
            request.prompt_codes = self.model.prompt_codes(request.prompt_audio,
                                                           request.prompt_sample_rate or self.model.sample_rate)
            request.prompt_audio = None
        if request.melody is not None:  # its stems and chroma, every window's, also here: seconds of CPU work
            self._separate(request)
        fut: Future = Future()
        with self._lock:
            if self._stop and self._thread is not None:
                if isinstance(self._crash, KVCacheTooLarge):  # every later request gets the reason too
                    raise KVCacheTooLarge(str(self._crash))
                raise RuntimeError("the engine is stopping")
            self._futures[request.id] = fut
            if sink is not None:
                self._taps[request.id] = self._new_tap(request, sink)
            self._submitted[request.id] = time.perf_counter()
            self._waiting.append((request, fut, progress))
            self._lock.notify_all()
        self.start()
        return fut

    def _separate(self, request: GenerationRequest) -> None:
        """The request's melody into per-window chroma, once one of ``separations`` is free (queued until then);
        ``cancel`` stops it while it waits or at demucs's next layer: submit then raises GenerationCanceled."""
        windows = job_windows(self.model, request)  # a bad duration is refused before anything waits
        stop = threading.Event()
        with self._lock:
            self._preparing[request.id] = stop
        try:
            while not self.separations.acquire(timeout=0.1):
                if stop.is_set():
                    raise GenerationCanceled(request.id)
            try:
                with cancellable(stop):
                    prepare_melody(self.model, request, windows, cache=self.chroma_cache)
            except SeparationCanceled:
                raise GenerationCanceled(request.id) from None
            finally:
                self.separations.release()
            if stop.is_set():
                raise GenerationCanceled(request.id)
        except GenerationCanceled:
            self.stats.canceled += 1
            raise
        finally:
            with self._lock:
                self._preparing.pop(request.id, None)

    def cancel(self, request_id: str) -> bool:
        """Cancel a waiting or running request (one whose melody is being separated too); True if it was known
        and not finished."""
        with self._lock:
            if request_id in self._preparing:
                self._preparing[request_id].set()
                return True
            fut = self._futures.get(request_id)
            if fut is None or fut.done():
                return False
            for item in list(self._waiting):
                if item[0].id == request_id:
                    self._waiting.remove(item)
                    self._finish_canceled(request_id, fut)
                    return True
            self._cancel.add(request_id)
            self._lock.notify_all()
        return True

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._batch.jobs) if self._batch else 0

    @property
    def compile_state(self) -> str:
        """``off`` (eager), ``compiling`` (eager until each bucket is ready), ``on`` or ``failed``."""
        steps = self._batch.static if self._batch is not None else None
        return getattr(steps, "state", "off") if self.compile else "off"

    # -- the loop ------------------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        codec = self._codec = ThreadPoolExecutor(1, thread_name_prefix="soundry-codec")
        crash: Exception | None = None
        try:
            lm, frames = self.model.lm, self.model.max_frames()
            device = next(lm.parameters()).device
            # the model's device for this thread's CUDA calls, scoped (never torch.cuda.set_device: the
            # process's other threads and engines keep theirs)
            scope = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
            with scope:
                prefix = self.model.max_prefix
                # on a GPU the condition cache is allocated once for the longest text (what fit_slots budgets):
                # never reallocated, so the graphs never go stale and old and new copies are never held together
                cond = self.model.conditioner.max_tokens if device.type == "cuda" else 64
                slots = fit_slots(lm, self.max_batch, frames, device, self.kv_cache_memory, self.model.name, prefix,
                                  max_cond_len=cond)
                self._batch = DecodeBatch(lm, slots, frames, max_prefix=prefix, max_cond_len=cond)
                self._batch.rng, self._batch.attention = self.rng, self.attention
                self._codec_stream = CodecStream(device)
                self._timer = StepTimer(device)
                self._setup_steps(device)
                self._loop()
        except Exception as exc:
            crash = self._crash = exc
            log.exception("the engine loop crashed")
        finally:  # every accepted request gets an answer: nothing waits forever on a stopped engine
            with self._lock:
                self._stop = True
                waiting, self._waiting = list(self._waiting), deque()
            for request, _future, _progress in waiting:
                self._fail(request.id, crash if isinstance(crash, KVCacheTooLarge) else RuntimeError("engine stopped"))
            for job in list(self._batch.jobs) if self._batch is not None else []:
                self._batch.remove(job)
                self._fail(job.request.id, RuntimeError("engine stopped"))
            codec.shutdown(wait=True)  # lets decodes in flight answer their requests
            with self._lock:  # a request whose decode was lost (handed off as the loop crashed) still gets one
                orphans = list(self._futures)
            for request_id in orphans:
                self._fail(request_id, crash or RuntimeError("engine stopped"))
            if self._batch is not None and hasattr(self._batch.static, "stop"):
                self._batch.static.stop()

    def _setup_steps(self, device: torch.device) -> None:
        """Compiled steps (CPU) or bucketed static steps (CUDA graphs), the latter captured now, at engine
        start, rather than in front of the first request."""
        if self.compile and device.type == "cpu" and getattr(self.model, "precision", "fp32") in ("fp32", "bf16"):
            from soundry.engine.compiled_steps import CompiledSteps

            self._batch.static = CompiledSteps(self._batch, cache_dir=self.compile_cache).start()
        elif self.static_steps or (self.static_steps is None and device.type == "cuda"):
            from soundry.engine.static_steps import StaticSteps

            self._batch.static = StaticSteps(self._batch)
            self._prepare_static()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stop and not self._waiting and not self._batch.jobs:
                    self._lock.wait(self.idle_wait)
                if self._stop:
                    return
                cancels, self._cancel = self._cancel, set()
                admit = [self._waiting.popleft() for _ in range(min(self._batch.free_slots, len(self._waiting)))]
            self._apply_cancels(cancels)
            if admit and not self._batch.jobs and hasattr(self._batch.static, "prepare"):
                self._prepare_static()
            if admit:
                self._admit(admit)
            if self._batch.jobs:
                self._step()

    def _prepare_static(self) -> None:
        """(Re)capture the step graphs while the batch is empty. On failure the engine falls back to the
        dynamic step for good, loudly: static steps without graphs attend over a whole key bucket and the
        whole condition cache and sort every logit: slower than the dynamic one."""
        try:
            self._batch.static.prepare()
        except Exception:
            log.exception("capturing CUDA graphs failed; this engine decodes with the dynamic step from now on")
            self._batch.static = None

    def _admit(self, items: list[tuple[GenerationRequest, Future, Progress | None]]) -> None:
        try:
            conds = self.model.conditions([r for r, _, _ in items])
        except Exception as exc:  # e.g. the text encoder failed: fail just these requests
            log.exception("conditioning failed")
            for req, _, _ in items:
                self._fail(req.id, exc)
            return
        for (req, _fut, progress), cond in zip(items, conds, strict=True):
            try:
                job = make_job(self.model, req, cond, _safe(progress))
                self._batch.admit(job)
            except Exception as exc:
                self._fail(req.id, exc)

    def _apply_cancels(self, ids: set[str]) -> None:
        for job in [j for j in self._batch.jobs if j.request.id in ids]:
            self._batch.remove(job)
            self._finish_canceled(job.request.id, self._futures.get(job.request.id))

    def _step(self) -> None:
        n = len(self._batch.jobs)
        t0 = self._timer.start()
        try:
            finished = self._batch.step()
        except Exception as exc:  # a broken step fails everyone in it; the engine keeps serving
            log.exception("decode step failed")
            for job in list(self._batch.jobs):
                self._batch.remove(job)
                self._fail(job.request.id, exc)
            return
        st = self.stats
        st.steps += 1
        st.step_seconds += self._timer.stop(t0)
        st.rows_stepped += n
        st.last_batch_size = n
        st.max_batch_size = max(st.max_batch_size, n)
        st.batch_sizes[n] = st.batch_sizes.get(n, 0) + 1
        if self._taps:
            self._feed_streams(finished)
        for job in finished:
            tokens = DecodeBatch.tokens_of(job)
            self._to_codec(tokens, self._decode, job, tokens)

    def _to_codec(self, codes: torch.Tensor, fn: Callable[..., None], *args) -> None:
        """Run ``fn(*args)`` on the codec thread (and, on a GPU, its stream) once ``codes`` are computed."""
        ready = self._codec_stream.handoff(codes)
        try:
            self._codec.submit(self._codec_stream.run, ready, fn, *args)
        except RuntimeError:  # the pool refuses new work at interpreter exit: decode here, the request is answered
            self._codec_stream.run(ready, fn, *args)

    def _new_tap(self, request: GenerationRequest, sink: AudioSink) -> StreamTap:
        rate, fps = self.model.sample_rate, self.model.frame_rate
        decoder = IncrementalDecoder(self.model.decode, int(round(rate / fps)), int(round(request.duration * rate)),
                                     left=int(fps), hold=max(1, int(fps / 10)))
        return StreamTap(sink, decoder, chunk=int(fps))  # one second of audio per chunk

    def _feed_streams(self, finished: list[Job]) -> None:
        """Hand each streamed job's newly final frames to the codec thread (before any final decode)."""
        done = {id(j) for j in finished}
        for job in [*self._batch.jobs, *finished]:
            tap = self._taps.get(job.request.id)
            if tap is None:
                continue
            final = id(job) in done
            try:
                codes = tap.take(job, self._batch, final)
            except Exception:
                log.exception("streaming: taking frames failed")
                tap.broken = True
                codes = None
            if codes is not None:
                self._to_codec(codes, tap.decode_into_sink, codes, final)
            if final:
                self._taps.pop(job.request.id, None)

    def _decode(self, job: Job, tokens: torch.Tensor) -> None:
        req = job.request
        try:
            audio = self.model.decode(tokens[None])[0]
            samples = int(round(req.duration * self.model.sample_rate))
            audio = audio[..., :samples]
            result = GenerationResult(tokens.cpu(), audio, self.model.sample_rate)
        except Exception as exc:
            log.exception("codec decode failed")
            self._fail(req.id, exc)
            return
        with self._lock:
            fut = self._futures.pop(req.id, None)
            started = self._submitted.pop(req.id, None)
        self.stats.completed += 1
        self.stats.audio_seconds += audio.shape[-1] / self.model.sample_rate
        if started is not None:
            self.stats.generation_seconds += time.perf_counter() - started
        if fut is not None and not fut.done():
            fut.set_result(result)

    def _fail(self, request_id: str, exc: BaseException) -> None:
        with self._lock:
            self._taps.pop(request_id, None)
            fut = self._futures.pop(request_id, None)
            self._submitted.pop(request_id, None)
        self.stats.failed += 1
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    def _finish_canceled(self, request_id: str, fut: Future | None) -> None:
        with self._lock:
            self._taps.pop(request_id, None)
            self._futures.pop(request_id, None)
            self._submitted.pop(request_id, None)
        self.stats.canceled += 1
        if fut is not None and not fut.done():
            fut.set_exception(GenerationCanceled(request_id))


def _safe(progress: Progress | None) -> Progress | None:
    """A progress callback that cannot break the decode loop."""
    if progress is None:
        return None

    def call(done: int, total: int) -> None:
        try:
            progress(done, total)
        except Exception:
            log.exception("progress callback failed")

    return call

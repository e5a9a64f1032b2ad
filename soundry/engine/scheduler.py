"""The engine: one model, one decode loop thread, requests joining and leaving between steps.

``submit`` returns a Future; the loop admits waiting requests into free slots (their T5 encoding
batched), runs one decode step for everyone, retires finished or canceled requests, and hands
finished codes to a separate thread for codec decoding, so decoding never stalls the LM.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from soundry.engine.base import EngineBase, EngineStats, Progress, _safe
from soundry.engine.batch import DecodeBatch, Job
from soundry.engine.chroma_cache import ChromaCache
from soundry.engine.codec_stream import CodecStream
from soundry.engine.jobs import job_windows, make_job, prepare_melody
from soundry.engine.memory import fit_slots
from soundry.engine.request import GenerationCanceled, GenerationRequest, GenerationResult
from soundry.engine.step_timer import StepTimer
from soundry.engine.streaming import AudioSink, IncrementalDecoder, StreamTap
from soundry.models.audiocraft.conditioners.melody import SeparationCanceled, cancellable

log = logging.getLogger(__name__)

__all__ = ["Engine", "EngineStats"]  # EngineStats (and _safe) live in engine.base; re-exported here


class Engine(EngineBase):
    """Continuous-batching generation over one loaded ``AudioModel`` (the bookkeeping: ``engine.base``)."""

    def __init__(self, model, max_batch: int = 16, idle_wait: float = 0.5, static_steps: bool | None = None,
                 compile: bool = False, compile_cache: Path | str | None = None, kv_cache_memory: float = 0.9,
                 rng: str = "generator", attention: str = "masked", separations: threading.Semaphore | None = None):
        """``separations``: the melody stem separations that may run at once (one semaphore shared by the
        process's engines: ``EngineManager``); default one at a time for this engine."""
        super().__init__(model, max_batch, idle_wait)
        self.separations = separations or threading.BoundedSemaphore(1)
        self._preparing: dict[str, threading.Event] = {}  # request id -> its cancel, while submit separates
        # on a GPU, at most this fraction of the free memory at start goes to the KV cache (engine.memory)
        self.kv_cache_memory = kv_cache_memory
        if rng not in ("generator", "counter") or attention not in ("masked", "lengths", "per_request"):
            raise ValueError(f"rng must be generator or counter (got {rng!r}), attention masked, lengths or "
                             f"per_request (got {attention!r})")
        self.rng, self.attention = rng, attention  # DecodeBatch's (see there)
        # bucketed static-shape steps (CUDA graphs on a GPU); default: on for CUDA, off on the CPU
        self.static_steps = static_steps
        # CPU, fp32 or bf16: compile the step in the background (soundry.engine.compiled_steps), decoding
        # eagerly until its graphs are ready; inductor's caches go to compile_cache
        self.compile, self.compile_cache = compile, compile_cache
        self._batch: DecodeBatch | None = None
        self._taps: dict[str, StreamTap] = {}  # request id -> its audio stream (requests submitted with a sink)
        self.chroma_cache = ChromaCache()  # melody models: chroma already computed (engine.chroma_cache)

    # -- what engine.base asks of a family ---------------------------------------------------------------
    @staticmethod
    def _id_of(job: Job) -> str:
        return job.request.id

    def _room(self) -> int:
        return self._batch.free_slots

    def _attach_sink(self, request: GenerationRequest, sink: AudioSink) -> None:
        self._taps[request.id] = self._new_tap(request, sink)

    def _forget(self, request_id: str) -> None:
        self._taps.pop(request_id, None)

    def _cancel_preparing(self, request_id: str) -> bool:
        """A request whose melody is being separated: its separation stops (``submit`` raises GenerationCanceled)."""
        if request_id in self._preparing:
            self._preparing[request_id].set()
            return True
        return False

    # -- public API --------------------------------------------------------------------------------
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
        return self._enqueue(request, progress, sink)

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
        return super().cancel(request_id)

    @property
    def compile_state(self) -> str:
        """``off`` (eager), ``compiling`` (eager until each bucket is ready), ``on`` or ``failed``."""
        steps = self._batch.static if self._batch is not None else None
        return getattr(steps, "state", "off") if self.compile else "off"

    # -- the loop ------------------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        self._codec = ThreadPoolExecutor(1, thread_name_prefix="soundry-codec")
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
            self._shut_down(crash)
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
        while (work := self._next()) is not None:
            cancels, admit = work
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
                self._finish(req.id, exc)
            return
        for (req, _fut, progress), cond in zip(items, conds, strict=True):
            try:
                job = make_job(self.model, req, cond, _safe(progress))
                self._batch.admit(job)
            except Exception as exc:
                self._finish(req.id, exc)

    def _after_step(self, finished: list[Job]) -> None:
        if self._taps:
            self._feed_streams(finished)
        for job in finished:
            tokens = DecodeBatch.tokens_of(job)
            self._to_codec(tokens, self._decode, job, tokens)

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
            self._finish(req.id, exc)
            return
        self._complete(req.id, result)

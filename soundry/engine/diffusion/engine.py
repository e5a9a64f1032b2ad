"""The diffusion engine: one model, one denoising loop thread, requests joining and leaving between steps.

The same public surface as the autoregressive ``soundry.engine.scheduler.Engine`` (``start``, ``stop``,
``submit(request, progress, sink) -> Future[GenerationResult]``, ``cancel``, ``queued``, ``active``, ``stats``,
``compile_state``), so the task runner can hold either. Each request is a ``DiffusionJob`` at its own step of its own
schedule with its own noise source (its seed), so its audio is its result alone whatever shares the batch, up to
the float rounding of a batched DiT call. A request's text is encoded and its initial noise drawn in ``submit``, on
the submitting thread, so an arrival never stalls the running batch. Progress is reported per step
(``progress(step, steps)``); a cancel takes
effect between steps; finished latents are decoded by the autoencoder on a separate thread (and, on a GPU, its own
stream), never between denoising steps. ``GenerationResult.tokens`` holds the final latents [C, L] (float).
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from soundry.engine.base import EngineBase, _safe
from soundry.engine.codec_stream import CodecStream
from soundry.engine.diffusion.batch import DiffusionBatch, DiffusionJob, Progress, make_job
from soundry.engine.memory import claim, fit_diffusion_batch, release
from soundry.engine.request import GenerationRequest, GenerationResult, record_seed
from soundry.engine.streaming import AudioSink

log = logging.getLogger(__name__)
MAX_STEPS = 1000


class DiffusionEngine(EngineBase):
    """Continuous batching of denoising steps over one loaded ``StableAudioModel``. ``max_batch`` bounds the
    requests stepped together (a guided request takes two DiT rows); at start the engine lowers that bound to what
    its memory budget holds (``batch_limit``; ``memory_fraction`` of the free memory: ``engine.memory``). The
    bookkeeping is ``engine.base``'s."""

    thread_name = "soundry-diffusion"
    step_name = "denoising"

    def __init__(self, model, max_batch: int = 16, idle_wait: float = 0.5, memory_fraction: float = 0.9):
        super().__init__(model, max_batch, idle_wait)
        self.memory_fraction = memory_fraction
        # requests at the longest clip that fit, and the bytes claimed for the rows, once the loop has started
        # (engine.memory.fit_diffusion_batch); requests are admitted by their own size within those bytes (_room)
        self.batch_limit, self._row_budget = max_batch, None
        self._sinks: dict[str, AudioSink] = {}
        self._prepared: dict[str, DiffusionJob] = {}  # waiting requests' jobs, built on the submitting thread
        self._batch = DiffusionBatch(model)

    # -- what engine.base asks of a family ---------------------------------------------------------------
    @staticmethod
    def _id_of(job: DiffusionJob) -> str:
        return job.id

    def _request_bytes(self, duration: float, guidance: float) -> int:
        """A request's working memory at its own length: its DiT rows (two when guided) and sampler state."""
        length = self.model.latent_length(duration)
        return (2 if guidance > 1.0 else 1) * self.model.dit_row_bytes(length) + self.model.state_bytes(length)

    def _room(self) -> int:
        """How many of the waiting requests join now, in order: up to ``max_batch`` stepped together, within the
        memory claimed at start for ``batch_limit`` requests at the longest clip (``_row_budget``) counted at each
        request's own length and guidance — shorter requests than the worst case share it (the DiT's attention
        grows with the square of the length); the first request always runs."""
        jobs = self._batch.jobs
        if self._row_budget is None:
            return max(0, self.batch_limit - len(jobs))
        used = sum(self._request_bytes(j.duration, j.guidance) for j in jobs)
        room = 0
        for request, _fut, _progress in self._waiting:
            if len(jobs) + room >= self.max_batch:
                break
            need = self._request_bytes(request.duration, float(request.cfg_coef))
            if used + need > self._row_budget and (jobs or room):
                break
            used, room = used + need, room + 1
        return room

    def _attach_sink(self, request: GenerationRequest, sink: AudioSink) -> None:
        self._sinks[request.id] = sink

    def _forget(self, request_id: str) -> None:
        self._sinks.pop(request_id, None)
        self._prepared.pop(request_id, None)

    # -- public API --------------------------------------------------------------------------------
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
        # the text encoding and the initial noise, here on the submitting thread (the task runner's), so that a
        # request arriving never stalls the running batch's steps; the loop only admits the ready job
        job = make_job(self.model, request.id, request.prompt, request.duration, float(request.cfg_coef), steps,
                       int(request.seed), request.negative_prompt, _safe(progress))
        with self._lock:
            self._prepared[request.id] = job
        try:
            return self._enqueue(request, progress, sink)
        except BaseException:
            with self._lock:
                self._prepared.pop(request.id, None)
            raise

    @property
    def compile_state(self) -> str:
        return "off"

    # -- the loop ------------------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        self._codec = ThreadPoolExecutor(1, thread_name_prefix="soundry-vae")
        device = self.model.device
        self._codec_stream = CodecStream(device)
        scope = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
        crash: Exception | None = None
        try:
            with scope:
                self._fit_memory(device)
                self._loop()
        except Exception as exc:
            crash = self._crash = exc
            log.exception("the diffusion engine loop crashed")
        finally:
            self._shut_down(crash)
            release(self)

    def _fit_memory(self, device: torch.device) -> None:
        """``batch_limit`` from the memory budget, and the budget claimed while the engine runs (so a model loaded
        later in the process counts it)."""
        m = self.model
        decode = m.decode_bytes()
        self.batch_limit, budget = fit_diffusion_batch(m.dit_row_bytes(), m.state_bytes(), decode,
                                                       self.max_batch, device, self.memory_fraction, m.name, owner=self)
        self._row_budget = budget - decode
        claim(self, device, budget)

    def _loop(self) -> None:
        while (work := self._next()) is not None:
            cancels, admit = work
            self._apply_cancels(cancels)
            for request, _fut, progress in admit:
                self._admit(request, progress)
            if self._batch.jobs:
                self._step()

    def _admit(self, req: GenerationRequest, progress: Progress | None) -> None:
        with self._lock:
            job = self._prepared.pop(req.id, None)
        if job is not None:  # None: canceled meanwhile (forgotten)
            self._batch.admit(job)

    def _after_step(self, finished: list[DiffusionJob]) -> None:
        for job in finished:
            self._to_codec(job.x, self._decode, job)

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
        if sink is not None:
            try:
                sink.push(audio.numpy())
            except Exception:  # a stream must never break generation; its listeners get the final file
                log.exception("streaming the finished audio failed")
        self._complete(job.id, result)

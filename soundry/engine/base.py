"""What every engine does around its loop, whatever it steps: the loop thread (start, stop), the queue of waiting
requests, their futures, cancels (a waiting request at once, a running one between steps), the step's counters,
handing finished work to the codec thread, and answering every accepted request when the loop ends.

``soundry.engine.scheduler.Engine`` (decode steps of an autoregressive LM) and
``soundry.engine.diffusion.engine.DiffusionEngine`` (denoising steps) subclass ``EngineBase`` and add what is theirs:
what ``submit`` checks or prepares before queuing (the LM's melody separation, which a cancel can stop while it
runs: ``_cancel_preparing``), how a sink is attached (``_attach_sink``, ``_forget``), what their batch is
(``_batch`` with ``jobs``, ``remove`` and ``step``; ``_id_of`` a job), how many waiting requests fit
(``_room``), and what follows a step (``_after_step``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from soundry.engine.codec_stream import CodecStream
from soundry.engine.memory import MemoryBudgetTooSmall
from soundry.engine.request import GenerationCanceled, GenerationRequest, GenerationResult
from soundry.engine.step_timer import StepTimer
from soundry.engine.streaming import AudioSink

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
Waiting = tuple[GenerationRequest, Future, Progress | None]


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


class EngineBase:
    """The bookkeeping both engine families share (see the module docstring)."""

    thread_name = "soundry-engine"
    step_name = "decode"  # in the log line of a step that failed

    def __init__(self, model, max_batch: int = 16, idle_wait: float = 0.5):
        self.model, self.max_batch, self.idle_wait = model, max_batch, idle_wait
        self.stats = EngineStats()
        self._lock = threading.Condition()
        self._waiting: deque[Waiting] = deque()
        self._cancel: set[str] = set()
        self._futures: dict[str, Future] = {}
        self._submitted: dict[str, float] = {}  # request id -> submit time (for generation seconds)
        self._thread: threading.Thread | None = None
        self._stop = False
        self._crash: Exception | None = None  # why the loop ended, if it crashed
        self._codec: ThreadPoolExecutor | None = None  # decoding beside the loop; owned by the loop
        self._codec_stream: CodecStream | None = None  # on a GPU, the codec thread's own CUDA stream
        self._timer = StepTimer("cpu")  # the steps' time (an engine may make one for its device)
        self._batch: Any = None

    # -- what a family adds --------------------------------------------------------------------------
    @staticmethod
    def _id_of(job) -> str:
        raise NotImplementedError

    def _room(self) -> int:
        """How many waiting requests the batch takes now (called under the lock)."""
        raise NotImplementedError

    def _attach_sink(self, request: GenerationRequest, sink: AudioSink) -> None:
        raise NotImplementedError

    def _forget(self, request_id: str) -> None:
        """Drop what the family keeps per request besides its future (called under the lock)."""

    def _cancel_preparing(self, request_id: str) -> bool:
        """Cancel a request that ``submit`` is still preparing (called under the lock); True if there was one."""
        return False

    def _after_step(self, finished: list) -> None:
        raise NotImplementedError

    # -- public API --------------------------------------------------------------------------------
    def start(self):
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._run, name=f"{self.thread_name}-{self.model.name}",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)  # the loop shuts the codec pool down when it exits
            self._thread = None

    def _enqueue(self, request: GenerationRequest, progress: Progress | None, sink: AudioSink | None) -> Future:
        """The queuing half of ``submit``, once the family has checked and prepared the request."""
        fut: Future = Future()
        with self._lock:
            if self._stop and self._thread is not None:
                if isinstance(self._crash, MemoryBudgetTooSmall):  # every later request gets the reason too
                    raise type(self._crash)(str(self._crash))
                raise RuntimeError("the engine is stopping")
            self._futures[request.id] = fut
            if sink is not None:
                self._attach_sink(request, sink)
            self._submitted[request.id] = time.perf_counter()
            self._waiting.append((request, fut, progress))
            self._lock.notify_all()
        self.start()
        return fut

    def cancel(self, request_id: str) -> bool:
        """Cancel a waiting or running request (between steps); True if it was known and not finished."""
        with self._lock:
            if self._cancel_preparing(request_id):
                return True
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
        return len(self._batch.jobs) if self._batch is not None else 0

    # -- the loop's shared parts -----------------------------------------------------------------------
    def _run(self) -> None:
        raise NotImplementedError

    def _next(self) -> tuple[set[str], list[Waiting]] | None:
        """Wait for work; then (the cancels asked for since the last step, the waiting requests the batch takes
        now), or None when the engine stops."""
        with self._lock:
            while not self._stop and not self._waiting and not self._batch.jobs:
                self._lock.wait(self.idle_wait)
            if self._stop:
                return None
            cancels, self._cancel = self._cancel, set()
            admit = [self._waiting.popleft() for _ in range(min(self._room(), len(self._waiting)))]
        return cancels, admit

    def _apply_cancels(self, ids: set[str]) -> None:
        for job in [j for j in self._batch.jobs if self._id_of(j) in ids]:
            self._batch.remove(job)
            self._finish(self._id_of(job), GenerationCanceled(self._id_of(job)))

    def _step(self) -> None:
        n = len(self._batch.jobs)
        t0 = self._timer.start()
        try:
            finished = self._batch.step()
        except Exception as exc:  # a broken step fails everyone in it; the engine keeps serving
            log.exception("%s step failed", self.step_name)
            for job in list(self._batch.jobs):
                self._batch.remove(job)
                self._finish(self._id_of(job), exc)
            return
        st = self.stats
        st.steps += 1
        st.step_seconds += self._timer.stop(t0)
        st.rows_stepped += n
        st.last_batch_size = n
        st.max_batch_size = max(st.max_batch_size, n)
        st.batch_sizes[n] = st.batch_sizes.get(n, 0) + 1
        self._after_step(finished)

    def _to_codec(self, tensor: torch.Tensor, fn: Callable[..., None], *args) -> None:
        """Run ``fn(*args)`` on the codec thread (and, on a GPU, its stream) once ``tensor`` is computed."""
        ready = self._codec_stream.handoff(tensor)
        try:
            self._codec.submit(self._codec_stream.run, ready, fn, *args)
        except RuntimeError:  # the pool refuses new work at interpreter exit: decode here, the request is answered
            self._codec_stream.run(ready, fn, *args)

    def _shut_down(self, crash: Exception | None) -> None:
        """The loop has ended: every accepted request gets an answer, nothing waits forever on a stopped engine."""
        with self._lock:
            self._stop = True
            waiting, self._waiting = list(self._waiting), deque()
        for request, _future, _progress in waiting:
            self._finish(request.id, crash if isinstance(crash, MemoryBudgetTooSmall) else
                         RuntimeError("engine stopped"))
        for job in list(self._batch.jobs) if self._batch is not None else []:
            self._batch.remove(job)
            self._finish(self._id_of(job), RuntimeError("engine stopped"))
        if self._codec is not None:
            self._codec.shutdown(wait=True)  # lets decodes in flight answer their requests
        with self._lock:  # a request whose decode was lost (handed off as the loop crashed) still gets one
            orphans = list(self._futures)
        for request_id in orphans:
            self._finish(request_id, crash or RuntimeError("engine stopped"))

    # -- answering a request ---------------------------------------------------------------------------
    def _complete(self, request_id: str, result: GenerationResult) -> None:
        """Answer a request with its result and count it."""
        with self._lock:
            fut = self._futures.pop(request_id, None)
            started = self._submitted.pop(request_id, None)
            self._forget(request_id)
        self.stats.completed += 1
        self.stats.audio_seconds += result.audio.shape[-1] / result.sample_rate
        if started is not None:
            self.stats.generation_seconds += time.perf_counter() - started
        if fut is not None and not fut.done():
            fut.set_result(result)

    def _finish(self, request_id: str, exc: BaseException) -> None:
        """Answer a request with its cancel or failure, count it and forget it."""
        with self._lock:
            fut = self._futures.pop(request_id, None)
            self._submitted.pop(request_id, None)
            self._forget(request_id)
        if isinstance(exc, GenerationCanceled):
            self.stats.canceled += 1
        else:
            self.stats.failed += 1
        if fut is not None and not fut.done():
            fut.set_exception(exc)


def _safe(progress: Progress | None) -> Progress | None:
    """A progress callback that cannot break the loop."""
    if progress is None:
        return None

    def call(done: int, total: int) -> None:
        try:
            progress(done, total)
        except Exception:
            log.exception("progress callback failed")

    return call

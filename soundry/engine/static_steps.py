"""Decode steps with static shapes at bucketed batch sizes, captured in CUDA graphs on a GPU.

A decode step of a mid-size model is hundreds of small kernels; at small batches the GPU waits on
Python and kernel launches. Here a step runs for a bucket of B slots (the smallest bucket that holds
the active jobs; the extra slots are free and only touch their own rows), attends over the whole
preallocated self-attention cache and condition cache (later keys are masked), and samples without
the host-side top-k bound, so every shape is fixed per bucket. On CUDA each bucket's step is
captured once in a ``torch.cuda.CUDAGraph`` and replayed; the per-request uniforms are copied into
the graph's input buffer before each replay, so nothing is synchronised with the host.

Graphs are captured while the batch is empty (capture warms up by running the step, which writes
into the slots). A graph replays the addresses it captured, so it is valid only while the cache
tensors it read are the same ones: graphs are keyed on the cache's ``version``, which changes whenever
the condition cache is reallocated (a long prompt grows it; its leaving shrinks it back). After such a
change steps run the dynamic step (the eager static one attends over the whole cache and sorts every
logit: far slower), and the graphs are captured again the next time the batch is empty. (Keying them
on the condition length alone replayed over freed memory once a long prompt had come and gone: the
lengths matched again, the tensors did not.) On a GPU the engine allocates the condition cache for the
longest text at start, so it is never reallocated and the graphs do not go stale.

On the CPU (``use_graphs=False``) the same static steps run eagerly; the tests use that to check
that padding and full-length attention give exactly the tokens of the dynamic step.
"""

from __future__ import annotations

import logging
import threading

import torch

log = logging.getLogger(__name__)
DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
# One capture at a time in a process (two engines, one per model, capture beside each other otherwise);
# each captures in thread-local mode, so work of other threads (the codec, prompt encoding on API threads,
# a lazy load) is not forbidden while it runs.
_CAPTURE_LOCK = threading.Lock()


class StaticSteps:
    """Bucketed static-shape steps: the smallest bucket holding the active jobs runs; its extra slots
    are padding that only touches its own rows and stays sane."""

    def __init__(self, batch, buckets: tuple[int, ...] = DEFAULT_BUCKETS, use_graphs: bool | None = None):
        self.batch = batch
        self.buckets = sorted({b for b in buckets if b < batch.max_slots} | {batch.max_slots})
        self.use_graphs = batch.device.type == "cuda" if use_graphs is None else use_graphs
        self.uniforms = {b: torch.zeros(b, batch.K, device=batch.device) for b in self.buckets}
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.captured_version = -1  # the cache version the graphs were captured on
        self.replays = self.dynamic_steps = 0  # steps served by a graph, and by the dynamic step while graphs are stale
        batch.cache.cross_mask[:, 0] = True  # free rows attend to one (finite) key: no NaN in padding

    def bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def _run(self, b: int) -> None:
        cache = self.batch.cache
        uniforms = None if self.batch.rng == "counter" else self.uniforms[b]  # counter: drawn inside the graph
        self.batch.decode(b, uniforms, cache.max_len, cache.max_cond_len, None)

    def step(self, n: int, uniforms: torch.Tensor | None) -> None:
        b = self.bucket(n)
        if uniforms is not None:
            self.uniforms[b][:n].copy_(uniforms)
        if b > n:  # padding slots advance too: restart them so their positions stay inside the cache
            self.batch.steps[n:b].zero_()
            self.batch.offsets[n:b].zero_()
        if not self.use_graphs:  # the CPU's eager static step (tests check it samples what the dynamic one does)
            self._run(b)
            return
        graph = self.graphs.get(b) if self.captured_version == self.batch.cache.version else None
        if graph is not None:
            graph.replay()
            self.replays += 1
        else:  # stale until the batch empties (maybe never under load): the dynamic step, not the eager static one
            self.batch.decode_dynamic(n, uniforms)
            self.dynamic_steps += 1

    def _restart_slots(self) -> None:
        """Every (free) slot back to position 0; only while the batch is empty."""
        self.batch.steps.zero_()
        self.batch.offsets.zero_()

    def prepare(self) -> None:
        """Capture (or recapture) the graphs; call only while no job is in the batch."""
        if not self.use_graphs or self.batch.jobs or self.captured_version == self.batch.cache.version:
            return
        self.graphs.clear()
        stream = torch.cuda.Stream(device=self.batch.device)
        stream.wait_stream(torch.cuda.current_stream(self.batch.device))
        with torch.cuda.stream(stream):
            for b in self.buckets:  # warm-up: lazy initialisation outside the capture
                self._restart_slots()  # each warm-up advances the slots: keep them inside the cache
                self._run(b)
        torch.cuda.current_stream(self.batch.device).wait_stream(stream)
        pool = None
        with _CAPTURE_LOCK:
            for b in reversed(self.buckets):  # largest first, so smaller graphs reuse its memory pool
                graph = torch.cuda.CUDAGraph()
                # on the batch's device's side stream: torch.cuda.graph's default is the current device's
                with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
                    self._run(b)
                pool = graph.pool()
                self.graphs[b] = graph
        self._restart_slots()
        self.captured_version = self.batch.cache.version
        log.info("captured CUDA graphs for batch buckets %s", self.buckets)

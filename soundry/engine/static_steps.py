"""Decode steps with static shapes at bucketed batch sizes and key lengths, captured in CUDA graphs on a GPU.

A decode step of a mid-size model is hundreds of small kernels; at small batches the GPU waits on
Python and kernel launches. Here a step runs for a bucket of B slots (the smallest bucket that holds
the active jobs; the extra slots are free and only touch their own rows), attends over the first KB
positions of the self-attention cache (KB: the smallest key bucket that holds the furthest job's position,
known on the host; later keys are masked) and over the whole condition cache, and samples without the
host-side top-k bound, so every shape is fixed per (B, KB). On CUDA each pair's step is captured once in a
``torch.cuda.CUDAGraph`` and replayed; the per-request uniforms are copied into the graph's input buffer
before each replay, so nothing is synchronised with the host.

Key buckets (issue 31, item 4): a graph reads every key position it was captured with, on every layer and
row, at every replay; over the whole cache that was musicgen-large's 30 s of positions at every step (16 slots:
~19 GB a step, more than its 6.6 GB of weights), wherever the requests were. The key ladder is powers of two
from ``MIN_KEY_BUCKET`` up to the cache's length, then the length itself (musicgen-large, 30 s: 64, 128, 256,
512, 1024, 1504), so a step reads at most twice the keys the furthest request needs (and at least 64). Every
(batch bucket, key bucket) pair is captured at ``prepare``, largest first, all into one memory pool: a
smaller graph's intermediates reuse the largest's memory, so the pool stays about one step's activations; what
grows with the pair count is capture time (one warm-up and one capture per pair) and each graph's own
instantiation, logged with the count.

Graphs are captured while the batch is empty (capture warms up by running the step, which writes
into the slots). A graph replays the addresses it captured, so it is valid only while the cache
tensors it read are the same ones: graphs are keyed on the cache's ``version``, which changes whenever
the condition cache is reallocated (a long prompt grows it; its leaving shrinks it back). After such a
change steps run the dynamic step (the eager static one also sorts every logit: far slower), and the graphs
are captured again the next time the batch is empty. (Keying them on the condition length alone replayed
over freed memory once a long prompt had come and gone: the lengths matched again, the tensors did not.) On a
GPU the engine allocates the condition cache for the longest text at start, so it is never reallocated and
the graphs do not go stale.

On the CPU (``use_graphs=False``) the same static steps run eagerly; the tests use that to check
that padding and attention over a key bucket give exactly the tokens of the dynamic step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import torch

log = logging.getLogger(__name__)
DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
MIN_KEY_BUCKET = 64  # the smallest key bucket of the default ladder (50 Hz models: 1.3 s of positions)
# One capture at a time in a process (two engines, one per model, capture beside each other otherwise);
# each captures in thread-local mode, so work of other threads (the codec, prompt encoding on API threads,
# a lazy load) is not forbidden while it runs.
_CAPTURE_LOCK = threading.Lock()


def key_ladder(max_len: int, smallest: int = MIN_KEY_BUCKET) -> tuple[int, ...]:
    """Powers of two from ``smallest`` below ``max_len``, then ``max_len`` (the whole cache)."""
    ladder, k = [], smallest
    while k < max_len:
        ladder.append(k)
        k *= 2
    return (*ladder, max_len)


class StaticSteps:
    """Bucketed static-shape steps: the smallest batch bucket holding the active jobs runs, over the smallest
    key bucket holding their positions; its extra slots are padding that only touches its own rows and stays
    sane. ``key_buckets``: the key lengths to capture (default ``key_ladder`` of the cache's length; the cache's
    length is always one: ``(max_len,)`` alone is a step over the whole cache)."""

    def __init__(self, batch, buckets: tuple[int, ...] = DEFAULT_BUCKETS, use_graphs: bool | None = None,
                 key_buckets: tuple[int, ...] | None = None):
        self.batch = batch
        self.buckets = sorted({b for b in buckets if b < batch.max_slots} | {batch.max_slots})
        max_len = batch.cache.max_len
        ladder = key_ladder(max_len) if key_buckets is None else key_buckets
        self.key_buckets = sorted({k for k in ladder if 0 < k < max_len} | {max_len})
        self.use_graphs = batch.device.type == "cuda" if use_graphs is None else use_graphs
        self.uniforms = {b: torch.zeros(b, batch.K, device=batch.device) for b in self.buckets}
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}  # (batch bucket, key bucket) -> its graph
        self.captured_version = -1  # the cache version the graphs were captured on
        self.capture_seconds = 0.0  # the last prepare's warm-ups and captures
        self.replays = self.dynamic_steps = 0  # steps served by a graph, and by the dynamic step while graphs are stale
        self.replayed: Counter[tuple[int, int]] = Counter()  # (batch bucket, key bucket) -> steps it served
        batch.cache.cross_mask[:, 0] = True  # free rows attend to one (finite) key: no NaN in padding

    def bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def key_bucket(self, key_len: int) -> int:
        """The smallest key bucket holding ``key_len`` keys (the host-side max over the jobs of position + 1)."""
        if key_len > self.key_buckets[-1]:
            raise ValueError(f"a step over {key_len} keys does not fit the cache's {self.key_buckets[-1]} positions")
        return next(k for k in self.key_buckets if k >= key_len)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """Every (batch bucket, key bucket): what ``prepare`` captures, smallest first."""
        return [(b, k) for b in self.buckets for k in self.key_buckets]

    def _run(self, b: int, keys: int) -> None:
        cache = self.batch.cache
        uniforms = None if self.batch.rng == "counter" else self.uniforms[b]  # counter: drawn inside the graph
        self.batch.decode(b, uniforms, keys, cache.max_cond_len, None)

    def step(self, n: int, uniforms: torch.Tensor | None) -> None:
        b, keys = self.bucket(n), self.key_bucket(self.batch.key_len())
        if uniforms is not None:
            self.uniforms[b][:n].copy_(uniforms)
        if b > n:  # padding slots advance too: restart them so their positions stay inside the cache
            self.batch.steps[n:b].zero_()
            self.batch.offsets[n:b].zero_()
        if not self.use_graphs:  # the CPU's eager static step (tests check it samples what the dynamic one does)
            self._run(b, keys)
            return
        graph = self.graphs.get((b, keys)) if self.captured_version == self.batch.cache.version else None
        if graph is not None:
            graph.replay()
            self.replays += 1
            self.replayed[b, keys] += 1
        else:  # stale until the batch empties (maybe never under load): the dynamic step, not the eager static one
            self.batch.decode_dynamic(n, uniforms)
            self.dynamic_steps += 1

    def _restart_slots(self) -> None:
        """Every (free) slot back to position 0; only while the batch is empty."""
        self.batch.steps.zero_()
        self.batch.offsets.zero_()

    def prepare(self) -> None:
        """Capture (or recapture) the graphs, one per (batch bucket, key bucket); call only while no job is
        in the batch."""
        if not self.use_graphs or self.batch.jobs or self.captured_version == self.batch.cache.version:
            return
        t0 = time.perf_counter()
        self.graphs.clear()
        pairs = self.pairs
        stream = torch.cuda.Stream(device=self.batch.device)
        stream.wait_stream(torch.cuda.current_stream(self.batch.device))
        with torch.cuda.stream(stream):
            for b, keys in pairs:  # warm-up: lazy initialisation (each pair's kernels) outside the capture
                self._restart_slots()  # each warm-up advances the slots: keep them inside the cache
                self._run(b, keys)
        torch.cuda.current_stream(self.batch.device).wait_stream(stream)
        pool = None
        with _CAPTURE_LOCK:
            for b, keys in reversed(pairs):  # largest first, so the smaller graphs reuse its memory pool
                self._restart_slots()  # (a real capture runs nothing; a stand-in's runs the step)
                graph = torch.cuda.CUDAGraph()
                # on the batch's device's side stream: torch.cuda.graph's default is the current device's
                with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
                    self._run(b, keys)
                pool = graph.pool()
                self.graphs[b, keys] = graph
        self._restart_slots()
        self.captured_version = self.batch.cache.version
        self.capture_seconds = time.perf_counter() - t0
        log.info("captured %d CUDA graphs in %.1f s: batch buckets %s x key buckets %s, one memory pool",
                 len(self.graphs), self.capture_seconds, self.buckets, self.key_buckets)

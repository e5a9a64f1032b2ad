"""CPU decode steps compiled by ``torch.compile`` (inductor), one graph per batch-size bucket.

A step runs for a bucket of B slots (the smallest bucket holding the active jobs; extra slots are
free and only touch their own rows, as in ``StaticSteps``). The row count, the condition length
and the sampler (no host-side top-k bound) are fixed per bucket; the self-attention key length
stays dynamic (a symbolic size), so one graph serves every position. Inductor freezes the weights
into the graph and, with ``max_autotune``, picks its C++ micro-GEMM where it beats MKL at these small
row counts.

Compilation never blocks serving: a background thread compiles the buckets, smallest first, on a
*scratch* copy of the batch state (same shapes, its own never-touched buffers, so it costs little
memory and cannot disturb running requests), while the loop keeps stepping eagerly; a bucket is
used once its graph exists. The compiled graph is guarded by the shapes it was built for; if the
condition cache grows (a long prompt), steps run eagerly again rather than recompile on the loop.
Inductor's caches go to ``cache_dir`` so a restart reuses the kernels and autotuning results.

Measured (bench/engine.py --compile, bench/RESULTS.md): on this project's 2-core AVX2 CPU the
compiled step was *slower* than the eager one, so the service leaves it off unless ``compile = true``.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from pathlib import Path

import torch

from soundry.engine.static_steps import DEFAULT_BUCKETS, BucketedSteps
from soundry.models.packed import is_packed

log = logging.getLogger(__name__)

INDUCTOR_OPTIONS = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}


def use_cache_dir(cache_dir: Path | str | None) -> None:
    """Point inductor's on-disk caches (FX graphs, kernels, autotuning) at ``cache_dir``."""
    if cache_dir:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)


def _step(batch, n: int, uniforms: torch.Tensor, key_marker: torch.Tensor, cross_len: int) -> None:
    """The compiled function: the batch's device work for ``n`` slots; ``key_marker.shape[0]`` is
    the self-attention key length (a tensor size, so inductor treats it as dynamic)."""
    batch.decode(n, uniforms, key_marker.shape[0], cross_len, None)


class CompiledSteps(BucketedSteps):
    """Drop-in for ``DecodeBatch.static``: ``step(n, uniforms)``; compiled buckets when ready,
    the batch's ordinary dynamic step otherwise."""

    def __init__(self, batch, buckets: tuple[int, ...] = DEFAULT_BUCKETS, options: dict | None = None,
                 cache_dir: Path | str | None = None):
        if batch.device.type != "cpu":
            raise ValueError("compiled steps are for the CPU; on a GPU the engine uses CUDA graphs")
        if is_packed(batch.lm):
            raise ValueError("compiled steps need plain nn.Linear weights (load the model with packed=False): "
                             "inductor lays out the weights it compiles itself")
        super().__init__(batch, buckets)
        self.options = dict(INDUCTOR_OPTIONS if options is None else options)
        self.cache_dir = cache_dir
        self.compiled: dict[int, tuple] = {}  # bucket -> (function, shape signature it was built for)
        self.compile_seconds: dict[int, float] = {}
        self.steps_compiled = 0  # steps that ran a compiled graph (the rest ran eagerly)
        self.state = "off"  # off | compiling | on | failed
        self.error: str | None = None
        self._fn = torch.compile(_step, fullgraph=True, dynamic=False, options=self.options)
        self._marker = torch.empty(batch.cache.max_len)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- serving ----------------------------------------------------------------------------------
    def _signature(self, batch) -> tuple:
        return batch.cache.max_cond_len, batch.cache.max_len, batch.max_slots

    def step(self, n: int, uniforms: torch.Tensor) -> None:
        b = self.bucket(n)
        entry = self.compiled.get(b)
        batch = self.batch
        key_len = max(j.step for j in batch.jobs) + 1
        if entry is None or entry[1] != self._signature(batch) or key_len >= batch.cache.max_len:
            batch.decode_dynamic(n, uniforms)
            return
        self.reset_padding(n, b)
        if b > n:
            uniforms = torch.cat([uniforms, uniforms.new_zeros(b - n, batch.K)])
        # ≥ 2 keys (later ones are masked): sizes 0 and 1 would be specialised
        entry[0](batch, b, uniforms, self._marker[: max(2, key_len)], batch.cache.max_cond_len)
        self.steps_compiled += 1

    # -- compiling --------------------------------------------------------------------------------
    def start(self) -> CompiledSteps:
        """Compile every bucket in a background thread (returns at once)."""
        if self._thread is None:
            self.state = "compiling"
            self._thread = threading.Thread(target=self._compile_all, name="soundry-compile", daemon=True)
            self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Block until compilation has finished (or failed); True if it has."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def stop(self) -> None:
        """Compile no further buckets (a bucket already compiling finishes)."""
        self._stop.set()

    def _compile_all(self) -> None:
        use_cache_dir(self.cache_dir)
        torch.set_grad_enabled(False)
        try:
            scratch = scratch_batch(self.batch)
            for b in self.buckets:
                if self._stop.is_set():
                    return
                t0 = time.perf_counter()
                self._compile(scratch, b)
                self.compile_seconds[b] = time.perf_counter() - t0
                log.info("compiled the decode step for batch bucket %d in %.1f s", b, self.compile_seconds[b])
            self.state = "on"
        except Exception as exc:  # keep serving eagerly
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("compiling the decode step failed; decoding eagerly")

    def _compile(self, scratch, b: int) -> None:
        """Compile (or load from inductor's cache) bucket ``b`` by running it once on ``scratch``."""
        cache = scratch.cache
        for t in (cache.k, cache.v):  # what the compile run reads: 2 key positions of its rows
            t[:, : 2 * b, :, :2].zero_()
        for t in (cache.ck, cache.cv):
            t[:, : 2 * b].zero_()
        uniforms = torch.rand(b, scratch.K)
        marker = torch.empty(2)
        # below max_len: a slice of the whole cache length would be specialised as a no-op
        torch._dynamo.mark_dynamic(marker, 0, min=2, max=cache.max_len - 1)
        with torch._dynamo.config.patch(recompile_limit=max(64, 2 * len(self.buckets))):
            self._fn(scratch, b, uniforms, marker, cache.max_cond_len)
        self.compiled[b] = (self._fn, self._signature(scratch))


def scratch_batch(batch):
    """A shallow copy of a DecodeBatch sharing the LM and constant tensors, with its own state
    buffers of the same shapes and strides. The cache-sized ones are ``torch.empty``: a compile run
    touches a few positions of a few rows, so most of their pages never become resident."""
    scratch = copy.copy(batch)
    scratch.jobs, scratch.static = [], None
    for name in ("codes", "steps", "lengths", "prompts", "params"):
        setattr(scratch, name, torch.zeros_like(getattr(batch, name)))
    scratch.params[:, 0] = 1.0  # temperature 1: finite sampling in the compile run
    scratch.lengths.fill_(1)
    cache = scratch.cache = copy.copy(batch.cache)
    for name in ("k", "v", "ck", "cv"):
        setattr(cache, name, torch.empty_like(getattr(batch.cache, name)))
    cache.cross_mask = torch.zeros_like(batch.cache.cross_mask)
    cache.cross_mask[:, 0] = True
    return scratch

"""CPU decode steps (fp32, bf16) compiled by ``torch.compile`` (inductor): two graphs serve every batch.

One graph runs a single request (dynamo specialises a size of 1), the other any number of requests
from 2 up: the row count, the self-attention key length and the cache's own sizes are symbolic, so
neither a request's position, nor the batch size, nor a longer condition recompiles, and nothing is
padded. The LM keeps its linear kernels: inductor calls soundry's row kernel (fp32 default,
``soundry.models.audiocraft.lm.rows_kernel``) as an external op with its weight as an input, and with freezing on
oneDNN's packed one (``soundry.models.audiocraft.lm.packed``; bf16, ``cpu_linear = onednn``) with its weight as a
constant (``freezes``); it fuses what lies between (norms, attention, residuals, guidance, sampling) into a few C++
loops, which removes most of the eager step's per-operator overhead. Plain ``nn.Linear`` weights compile too
(inductor then packs them itself).

The sampler is compiled with a top-k bound (``TOPK_BOUND``, audiocraft's default top_k; a full sort
of the vocabulary costs ~1.5 ms a step at batch 8): a step in which some request has top_k = 0 or
above the bound runs eagerly, as does a step whose keys reach the end of the cache (a key length
equal to the cache's would be specialised).

Compilation never blocks serving: a background thread compiles both graphs on a *scratch* copy of
the batch state (same shapes, its own never-touched buffers, so it costs little memory and cannot
disturb running requests), while the loop keeps stepping eagerly; a graph is used once it exists.
``compile_now`` does the same synchronously (``generate(compile=True)``). Inductor's caches go to
``cache_dir`` so a restart reuses the kernels; dynamo's in-memory graphs are shared by every batch
of the same model in the process (the guards check the weights' identity).

Measured on a 2-core AVX-512 CPU (bench/RESULTS.md): the step alone ~1.26-1.28x the eager packed
step at batch 1 and 8 on a dim-512, 8-layer LM in fp32 (whole clips 1.07-1.13x, bench/end_to_end.py;
1.29-1.46x in bf16), and 1.05-1.08x on musicgen-small, whose step is nearly all linear layers
(bench/engine.py --compile); compiling takes ~25 s a graph (dim 512) to 65-90 s (musicgen-small).
In fp32 the compiled step samples the eager step's tokens exactly; in bf16 fused kernels round
differently (bench/fidelity.py measures both against fp32).
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

TOPK_BOUND = 250
MAX_SIZE = 1 << 20  # upper bound of the symbolic sizes (dynamo needs one with a lower bound)
MAX_KEYS = 4096  # the key length's (dynamo guards it there); a 30 s context has ~1500 steps


def use_cache_dir(cache_dir: Path | str | None) -> None:
    """Point inductor's on-disk caches (FX graphs, kernels, autotuning) at ``cache_dir``."""
    if cache_dir:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)


def _step(batch, uniforms: torch.Tensor, key_marker: torch.Tensor) -> None:
    """The compiled function: the batch's device work for ``uniforms.shape[0]`` slots over
    ``key_marker.shape[0]`` self-attention keys (tensor sizes, so inductor can keep them symbolic)."""
    batch.decode(uniforms.shape[0], uniforms, key_marker.shape[0], batch.cache.max_cond_len, TOPK_BOUND)


# One compiled function for the process: dynamo keeps its graphs per model (guarded on the weights).
_compiled_step = torch.compile(_step, fullgraph=True, dynamic=False)


def freezes(lm) -> bool:
    """Whether the compiled step of ``lm`` needs inductor's freezing: yes for oneDNN-packed (or plain) linears,
    which inductor's oneDNN lowering takes only as graph constants; no for soundry's row kernel
    (``soundry.models.audiocraft.lm.rows_kernel``), an op that takes its weight as an input. Frozen graphs bypass
    inductor's FX graph cache, so they are rebuilt by every process (~30 s a graph at dim 512); unfrozen ones
    load from ``cache_dir`` on a restart (~7 s; bench/RESULTS.md)."""
    from soundry.models.audiocraft.lm.rows_kernel import uses_rows_kernel

    return not uses_rows_kernel(lm)


def _run_compiled(batch, uniforms: torch.Tensor, key_marker: torch.Tensor, freeze: bool) -> None:
    """Call the compiled step with inductor's freezing set to ``freeze`` (``freezes``; ~12 us a call), for the first
    compile and for any recompile should a guard fail. Set for each call because torch's config overrides are
    thread-local (the engine compiles in one thread and steps in another), and passed in
    ``torch.compile``'s options freezing does not take effect (dynamo reads it while tracing)."""
    with (torch._inductor.config.patch(freezing=freeze),
          torch._dynamo.config.patch(recompile_limit=64)):
        _compiled_step(batch, uniforms, key_marker)


def _graph_for(n: int) -> int:
    return 1 if n == 1 else 2


class CompiledSteps:
    """Drop-in for ``DecodeBatch.static``: ``step(n, uniforms)`` runs a compiled graph when one
    exists for ``n`` and the step's requests fit it, the batch's ordinary dynamic step otherwise."""

    def __init__(self, batch, cache_dir: Path | str | None = None):
        if batch.device.type != "cpu":
            raise ValueError("compiled steps are for the CPU; on a GPU the engine uses CUDA graphs")
        self.batch = batch
        self.cache_dir = cache_dir
        self.freeze = freezes(batch.lm)  # once: it walks the LM's modules
        self.graphs = [1] + ([2] if batch.max_slots >= 2 else [])  # 1: one request; 2: two or more
        self.compile_seconds: dict[int, float] = {}  # graphs ready, with what each took to compile
        self.steps_compiled = 0  # steps that ran a compiled graph (the rest ran eagerly)
        self.state = "off"  # off | compiling | on | failed
        self.error: str | None = None
        self._marker = torch.empty(batch.cache.max_len)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- serving ----------------------------------------------------------------------------------
    def fits(self, n: int, key_len: int) -> bool:
        """Whether the compiled graph for ``n`` requests exists and serves a step over ``key_len`` keys."""
        batch = self.batch
        return (_graph_for(n) in self.compile_seconds
                and key_len < min(batch.cache.max_len, MAX_KEYS)
                and all(0 < j.request.top_k <= TOPK_BOUND for j in batch.jobs))

    def step(self, n: int, uniforms: torch.Tensor | None) -> None:
        batch = self.batch
        if uniforms is None:  # rng="counter": drawn before the compiled graph, which takes them as input
            uniforms = batch.draw_counter(n)
        key_len = batch.key_len()
        if not self.fits(n, key_len):
            batch.decode_dynamic(n, uniforms)
            return
        # ≥ 2 keys (later ones are masked): sizes 0 and 1 would be specialised
        _run_compiled(batch, uniforms, self._marker[: max(2, key_len)], self.freeze)
        self.steps_compiled += 1

    # -- compiling --------------------------------------------------------------------------------
    def start(self) -> CompiledSteps:
        """Compile both graphs in a background thread (returns at once)."""
        if self._thread is None:
            self.state = "compiling"
            self._thread = threading.Thread(target=self._compile_all, name="soundry-compile", daemon=True)
            self._thread.start()
        return self

    def compile_now(self, n: int | None = None) -> CompiledSteps:
        """Compile (or fetch from dynamo's and inductor's caches) the graph for ``n`` requests, or
        both, in this thread; raise if compiling fails."""
        self.state = "compiling"
        self._compile_all(graphs=self.graphs if n is None else [_graph_for(n)], raise_errors=True)
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Block until compilation has finished (or failed); True if it has."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def stop(self) -> None:
        """Compile no further graphs (one already compiling finishes)."""
        self._stop.set()

    def _compile_all(self, graphs: list[int] | None = None, raise_errors: bool = False) -> None:
        use_cache_dir(self.cache_dir)
        torch.set_grad_enabled(False)
        try:
            scratch = scratch_batch(self.batch)
            for g in graphs or self.graphs:
                if self._stop.is_set():
                    return
                t0 = time.perf_counter()
                self._compile(scratch, g, self.freeze)
                self.compile_seconds[g] = time.perf_counter() - t0
                log.info("decode step for %s ready in %.1f s", "one request" if g == 1 else "2+ requests",
                         self.compile_seconds[g])
            self.state = "on"
        except Exception as exc:  # keep serving eagerly
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("compiling the decode step failed; decoding eagerly")
            if raise_errors:
                raise

    @staticmethod
    def _compile(scratch, g: int, freeze: bool) -> None:
        """Compile graph ``g`` (1: one request; 2: two or more) by running it once on ``scratch``."""
        cache = scratch.cache
        for t in cache.k + cache.v:  # what the compile run reads: 2 key positions of its rows
            t[: 2 * g, :, :2].zero_()
        for t in cache.ck + cache.cv:
            t[: 2 * g].zero_()
        uniforms = torch.rand(g, scratch.K)
        marker = torch.empty(2)
        torch._dynamo.mark_dynamic(marker, 0, min=2, max=MAX_KEYS)
        if g > 1:
            torch._dynamo.mark_dynamic(uniforms, 0, min=2, max=MAX_SIZE)
        for t in cache.tensors():  # rows, and positions / condition keys
            torch._dynamo.mark_dynamic(t, 0)
            torch._dynamo.mark_dynamic(t, 2)
        torch._dynamo.mark_dynamic(cache.cross_mask, 0)
        torch._dynamo.mark_dynamic(cache.cross_mask, 1)
        for name in ("codes", "steps", "lengths", "prompts", "offsets", "params"):
            torch._dynamo.mark_dynamic(getattr(scratch, name), 0)
        torch._dynamo.mark_dynamic(scratch.codes, 2)
        _run_compiled(scratch, uniforms, marker, freeze)


def scratch_batch(batch):
    """A shallow copy of a DecodeBatch sharing the LM and constant tensors, with its own state
    buffers of the same shapes and strides. The cache-sized ones are ``torch.empty``: a compile run
    touches a few positions of a few rows, so most of their pages never become resident."""
    scratch = copy.copy(batch)
    scratch.jobs, scratch.static = [], None
    for name in ("codes", "steps", "lengths", "prompts", "offsets", "params"):
        setattr(scratch, name, torch.zeros_like(getattr(batch, name)))
    scratch.params[:, 0] = 1.0  # temperature 1: finite sampling in the compile run
    scratch.params[:, 1] = TOPK_BOUND
    scratch.lengths.fill_(1)
    cache = scratch.cache = copy.copy(batch.cache)
    for name in ("k", "v", "ck", "cv"):
        setattr(cache, name, [torch.empty_like(t) for t in getattr(batch.cache, name)])
    cache.cross_mask = torch.zeros_like(batch.cache.cross_mask)
    cache.cross_mask[:, 0] = True
    return scratch

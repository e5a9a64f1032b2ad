"""The decode core: many requests' rows in one KV cache, advanced together one step at a time.

Each active request ("job") owns a slot; slot s uses cache rows 2s (conditional) and 2s+1
(unconditional, the guidance branch). Active slots are kept contiguous (0..n-1), so a step reads
the cache through views; a leaving job's slot is refilled by moving the last one. Codes live on the
device in the delay-pattern-free layout [slot, K, T]; the pattern is applied by index arithmetic.

A job may carry a prefix per window: condition embeddings the LM reads before the audio (MusicGen-melody
prepends the melody's chroma and the text). A window's prefix fills the first positions of its rows when
the window starts, and its steps take the positions after it, so jobs with prefixes of any length (or
none) share a step: each row's position is its prefix length plus its step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from soundry.engine.counter_rng import counter_uniforms
from soundry.engine.request import GenerationRequest
from soundry.engine.sampling import apply_cfg, sample
from soundry.engine.windows import Window
from soundry.models.audiocraft.lm.kv_cache import KVCache
from soundry.models.audiocraft.lm.transformer import TransformerLM
from soundry.models.transfer import to_device


@dataclass
class Job:
    """One request's decoding state across its windows."""

    request: GenerationRequest
    windows: list[Window]
    cond: torch.Tensor  # [2, L, D] conditional and guidance-branch condition
    cond_valid: torch.Tensor  # [2, L] keys each branch attends to
    generator: torch.Generator
    progress: Callable[[int, int], None] | None = None
    slot: int = -1
    window: int = 0
    step: int = 0  # next input step of the delay pattern to feed
    steps_done: int = 0
    pieces: list[torch.Tensor] = field(default_factory=list)  # audio prompt, then new codes of each window [K, t]
    prompt_codes: torch.Tensor | None = None  # [K, P] audio-prompt codes that start the first window
    # window index -> [2, prefix_len, D] embeddings read before that window's audio (built when the window
    # starts, so a long clip holds only its small per-window inputs); None: no prefix
    prefix: Callable[[int], torch.Tensor] | None = None
    prefix_len: int = 0  # positions the prefix takes, the same in every window

    @property
    def position(self) -> int:
        """The cache position of the next step."""
        return self.prefix_len + self.step

    def total_steps(self, max_delay: int) -> int:
        return sum(w.length + max_delay - w.prompt for w in self.windows)

    @property
    def current(self) -> Window:
        return self.windows[self.window]


class DecodeBatch:
    """Owns the KV cache and per-slot tensors; ``admit``, ``step`` and ``remove`` jobs."""

    def __init__(self, lm: TransformerLM, max_slots: int, max_frames: int, device: torch.device | str | None = None,
                 max_prefix: int = 0, max_cond_len: int = 64):
        """``max_prefix``: the longest prefix a job may carry (positions reserved in the cache);
        ``max_cond_len``: condition tokens the cross-attention cache holds before it must grow (and be
        reallocated, which makes captured CUDA graphs stale)."""
        self.lm = lm
        p = next(lm.parameters())
        self.device = torch.device(device) if device is not None else p.device
        cfg = lm.cfg
        self.K, self.card = cfg.n_q, cfg.card
        self.delays = to_device(torch.tensor(cfg.delays), self.device)
        self.max_delay = max(cfg.delays)
        self.max_slots, self.max_frames, self.max_prefix = max_slots, max_frames, max_prefix
        self.cache = KVCache(lm, 2 * max_slots, max_frames + self.max_delay + 1 + max_prefix, max_cond_len,
                             device=self.device)
        self.codes = torch.zeros(max_slots, self.K, max_frames, dtype=torch.long, device=self.device)
        self.steps = torch.zeros(max_slots, dtype=torch.long, device=self.device)
        self.lengths = torch.zeros(max_slots, dtype=torch.long, device=self.device)
        self.prompts = torch.zeros(max_slots, dtype=torch.long, device=self.device)
        self.offsets = torch.zeros(max_slots, dtype=torch.long, device=self.device)  # prefix length: position - step
        self.params = torch.zeros(max_slots, 4, device=self.device)  # temperature, top_k, top_p, cfg
        # rng "generator": each request's torch.Generator; "counter": uniforms hashed from its seed and its
        # draws so far (engine.counter_rng: the same on any device, no per-request generator calls)
        self.rng = "generator"
        self.seeds = torch.zeros(max_slots, dtype=torch.long, device=self.device)
        self.draws = torch.zeros(max_slots, dtype=torch.long, device=self.device)
        # attention "masked": a decode step attends through a boolean mask over the furthest job's keys;
        # "lengths": when every job is at the same position, over exactly its keys with no mask (which lets
        # scaled_dot_product_attention pick its fused kernels); "per_request": each job's rows over exactly their
        # own keys and condition, one attention call per job, so a row's logits do not depend on what shares its
        # batch (over another job's extra, masked keys the kernel sums in another order: ~1e-6 apart, enough to
        # flip a sampled token at a near-tie)
        self.attention = "masked"
        self.jobs: list[Job] = []
        self._ar_k = torch.arange(self.K, device=self.device)
        self.static = None  # StaticSteps (CUDA graphs) or CompiledSteps (torch.compile on the CPU) when enabled

    # -- admission and retirement --------------------------------------------------------------
    @property
    def free_slots(self) -> int:
        return self.max_slots - len(self.jobs)

    def admit(self, job: Job) -> None:
        if self.free_slots <= 0:
            raise RuntimeError("no free slot")
        if max(w.length for w in job.windows) > self.max_frames:
            raise ValueError(f"window of {job.current.length} frames exceeds the batch's {self.max_frames}")
        if job.prefix_len > self.max_prefix:
            raise ValueError(f"a prefix of {job.prefix_len} positions exceeds the batch's {self.max_prefix}")
        job.slot = len(self.jobs)
        self.jobs.append(job)
        s = job.slot
        self.cache.set_condition(slice(2 * s, 2 * s + 2), job.cond, job.cond_valid)
        r = job.request
        self.params[s] = to_device(torch.tensor([r.temperature, r.top_k, r.top_p, r.cfg_coef]), self.device)
        self.seeds[s], self.draws[s] = r.seed or 0, 0
        self._start_window(job, prompt_codes=job.prompt_codes)

    def remove(self, job: Job) -> None:
        """Take a job out (finished or canceled); the last slot moves into its place."""
        s, last = job.slot, len(self.jobs) - 1
        if s != last:
            moved = self.jobs[last]
            self.cache.move(slice(2 * last, 2 * last + 2), slice(2 * s, 2 * s + 2))
            for t in (self.codes, self.steps, self.lengths, self.prompts, self.offsets, self.params, self.seeds,
                      self.draws):
                t[s] = t[last]
            moved.slot = s
            self.jobs[s] = moved
        self.jobs.pop()
        self.cache.release(slice(2 * last, 2 * last + 2))
        # a freed slot holds a safe position: static steps' padding and graph warm-ups advance it, and from
        # the last position of a full window that would write past the cache (a device-side assert on CUDA)
        self.steps[last], self.offsets[last] = 0, 0
        job.slot = -1

    def _start_window(self, job: Job, prompt_codes: torch.Tensor | None) -> None:
        s, w = job.slot, job.current
        self.lengths[s], self.prompts[s], self.offsets[s] = w.length, w.prompt, job.prefix_len
        if w.prompt:
            self.codes[s, :, : w.prompt] = prompt_codes
        job.step = w.prompt
        self.steps[s] = w.prompt
        if w.prompt or job.prefix_len:
            self._prefill(job)

    def _prefill(self, job: Job) -> None:
        """Feed a window's prefix and its input steps [0, prompt) (when it starts from known codes: an
        audio prompt or the previous window's tail) into the job's cache rows."""
        s, P = job.slot, job.current.prompt
        steps = torch.arange(P, device=self.device)
        tokens = self._input_tokens(torch.arange(s, s + 1, device=self.device), steps[None, :])
        tokens = tokens.repeat_interleave(2, dim=0)
        start = torch.zeros(2, dtype=torch.long, device=self.device)
        rows = slice(2 * s, 2 * s + 2)
        prefix = None if job.prefix is None else job.prefix(job.window)
        if prefix is not None and prefix.shape[:2] != (2, job.prefix_len):
            raise ValueError(f"window {job.window}'s prefix is {tuple(prefix.shape)}, not [2, {job.prefix_len}, D]")
        self.lm.forward_cached(tokens, start, self.cache, rows, self.cache.cross_mask[rows],
                               key_len=job.prefix_len + P, prefix=prefix)

    def _input_tokens(self, slots: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Delay-pattern inputs: slots [n], steps [n, S] → tokens [n, K, S] (special where invalid)."""
        t = steps[:, None, :] - 1 - self.delays[None, :, None]  # [n, K, S]
        valid = (t >= 0) & (t < self.lengths[slots].view(-1, 1, 1))
        idx = t.clamp(0, self.codes.shape[2] - 1)
        tok = self.codes[slots.view(-1, 1, 1), self._ar_k.view(1, -1, 1), idx]
        return torch.where(valid, tok, torch.full_like(tok, self.lm.special_token))

    # -- one decode step -------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> list[Job]:
        """Advance every active job by one step; returns the jobs whose last window finished."""
        n = len(self.jobs)
        if n == 0:
            return []
        if self.rng == "counter":
            uniforms = None  # drawn inside the step (so inside its CUDA graph on a GPU): draw_counter
        else:
            uniforms = torch.stack([torch.rand(self.K, generator=j.generator, device=self.device) for j in self.jobs])
        if self.static is not None:
            self.static.step(n, uniforms)
        else:
            self.decode_dynamic(n, uniforms)
        return self._advance_host()

    def draw_counter(self, n: int) -> torch.Tensor:
        """rng="counter": slots [0, n)'s uniforms [n, K] for this step; advances their draw counters."""
        uniforms = counter_uniforms(self.seeds[:n], self.draws[:n], self.K)
        self.draws[:n] += 1
        return uniforms

    def decode_dynamic(self, n: int, uniforms: torch.Tensor | None) -> None:
        """``decode`` with the shapes the active jobs need: keys up to the furthest job's position,
        the current condition length, and a host-side top-k bound when every job has one."""
        key_len = self.key_len()
        all_k = all(j.request.top_k > 0 for j in self.jobs)
        max_k = max(j.request.top_k for j in self.jobs) if all_k else None
        exact = self.attention == "lengths" and all(j.position == self.jobs[0].position for j in self.jobs)
        groups = None
        if self.attention == "per_request":  # (rows, self keys, condition keys) of each job, from host-side lengths
            lens = self.cache.cond_lens
            groups = [(2, j.position + 1, max(1, lens[2 * j.slot], lens[2 * j.slot + 1])) for j in self.jobs]
        self.decode(n, uniforms, key_len, self.cache.cross_len, max_k, self_mask=not exact, groups=groups)

    def key_len(self) -> int:
        """Keys the next step attends over: up to the furthest job's position."""
        return max(j.position for j in self.jobs) + 1

    def decode(self, n: int, uniforms: torch.Tensor | None, key_len: int, cross_len: int, max_k: int | None,
               self_mask: bool = True, groups: list[tuple[int, int, int]] | None = None) -> None:
        """The device work of a step for slots [0, n): forward, guidance, sampling, write the new
        codes, advance the step counters. No host synchronisation; with fixed ``n``, ``key_len``,
        ``cross_len`` and ``max_k`` every shape is static, so it can be captured in a CUDA graph.
        Slots past the active jobs may be computed too (padding): they only touch their own rows.
        ``uniforms`` None: drawn here from each slot's seed and draw counter (rng="counter")."""
        if uniforms is None:
            uniforms = self.draw_counter(n)
        slots = torch.arange(n, device=self.device)
        steps = self.steps[:n]
        tokens = self._input_tokens(slots, steps[:, None]).repeat_interleave(2, dim=0)
        rows = slice(0, 2 * n)
        hidden = self.lm.forward_cached(tokens, (steps + self.offsets[:n]).repeat_interleave(2), self.cache, rows,
                                        self.cache.cross_mask[rows], key_len=key_len, cross_len=cross_len,
                                        self_mask=self_mask, groups=groups)
        logits = self.lm.logits(hidden)[:, :, -1].float().view(n, 2, self.K, self.card)
        params = self.params[:n]
        guided = apply_cfg(logits, params[:, 3])
        new = sample(guided, params[:, 0], params[:, 1].long(), params[:, 2], uniforms, max_k=max_k)
        self._write(slots, steps, new)
        self.steps[:n] += 1

    def _write(self, slots: torch.Tensor, steps: torch.Tensor, new: torch.Tensor) -> None:
        t = steps[:, None] - self.delays[None, :]  # frame each codebook's new token belongs to
        valid = (t >= self.prompts[slots, None]) & (t < self.lengths[slots, None])
        idx = t.clamp(0, self.codes.shape[2] - 1)
        ix = (slots[:, None], self._ar_k[None, :], idx)
        self.codes[ix] = torch.where(valid, new, self.codes[ix])

    def _advance_host(self) -> list[Job]:
        finished = []
        for job in list(self.jobs):
            job.step += 1
            job.steps_done += 1
            if job.progress is not None:
                job.progress(job.steps_done, job.total_steps(self.max_delay))
            w = job.current
            if job.step < w.length + self.max_delay:
                continue
            codes = self.codes[job.slot, :, : w.length].clone()
            job.pieces.append(codes[:, w.prompt:])
            if job.window + 1 < len(job.windows):
                stride = w.length - job.windows[job.window + 1].prompt
                job.window += 1
                self._start_window(job, prompt_codes=codes[:, stride:])
            else:
                finished.append(job)
        for job in finished:
            self.remove(job)
        return finished

    @staticmethod
    def tokens_of(job: Job) -> torch.Tensor:
        """All codes of a finished job, [K, T]: its audio prompt's, then the generated ones."""
        return torch.cat(job.pieces, dim=-1)

"""Turning requests into decode jobs, and the reference ``generate`` loop over one ``DecodeBatch``.

``generate`` is what audiocraft's ``generate`` / ``generate_continuation`` compute (joint
conditioning of a batch, windows beyond the context), run on the engine's decode core; the
service uses ``make_job`` with the continuous-batching ``Engine`` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from soundry.engine.batch import DecodeBatch
from soundry.engine.jobs import job_windows, make_job, melody_shifts
from soundry.engine.request import GenerationRequest


@dataclass
class GenerationOutput:
    tokens: torch.Tensor  # [B, K, T] int64 (an audio prompt's codes first)
    audio: torch.Tensor  # [B, C, N] float32
    sample_rate: int


@torch.no_grad()
def generate(model, prompts: list[str] | str, duration: float = 5.0, top_k: int = 250, top_p: float = 0.0,
             temperature: float = 1.0, cfg_coef: float | None = None, seed: int | None = None,
             negative_prompts: list[str] | None = None, max_duration: float | None = None,
             extend_stride: float | None = None, progress: Callable[[int, int], None] | None = None,
             prompt_audio: torch.Tensor | None = None, prompt_sample_rate: int | None = None,
             compile: bool = False, compile_cache: Path | str | None = None, melody: torch.Tensor | None = None,
             melody_sample_rate: int | None = None, demucs_shifts: list[int] | None = None,
             steps: int | None = None) -> GenerationOutput:
    """Generate a batch of clips as audiocraft's ``generate`` does (joint conditioning).

    With ``seed``, prompt i uses seed + i. ``progress(done, total)`` counts decode steps.
    ``prompt_audio`` ([C, N] for all prompts, or [B, C, N]) at ``prompt_sample_rate`` (default: the
    model's) makes it ``generate_continuation``: the clip is converted to the model's rate and
    channels, encoded, and continued; ``duration`` is the total, and the output starts with the
    prompt's codes (its audio decodes all of them). ``compile`` (CPU) runs the decode steps compiled
    (``soundry.engine.compiled_steps``): the first call for a model compiles for a while (inductor's
    caches in ``compile_cache``), later ones in the process reuse the graphs.

    A melody model takes ``melody`` ([C, N] for all prompts, or [B, C, N]) at ``melody_sample_rate`` (default:
    the model's), as audiocraft's ``generate_with_chroma``: the batch's melodies are separated together, one
    demucs call per window; ``demucs_shifts`` gives demucs's time-shift draws in order (default: drawn from
    ``seed``). Without ``melody`` a melody model is conditioned on silence, as audiocraft's ``generate``.

    A diffusion model (``model.is_diffusion``) takes ``duration, seed, cfg_coef, steps, negative_prompts,
    progress`` and returns ``soundry.engine.diffusion.generate.DiffusionOutput``."""
    if getattr(model, "is_diffusion", False):
        from soundry.engine.diffusion.generate import generate_diffusion

        return generate_diffusion(model, prompts, duration=duration, seed=seed, cfg_coef=cfg_coef, steps=steps,
                                  negative_prompts=negative_prompts, progress=progress)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    negs = negative_prompts or [None] * len(prompts)
    codes = [None] * len(prompts)
    if prompt_audio is not None:
        audio = prompt_audio if prompt_audio.dim() == 3 else prompt_audio[None].expand(len(prompts), -1, -1)
        if audio.shape[0] != len(prompts):
            raise ValueError(f"{audio.shape[0]} prompt clips for {len(prompts)} prompts")
        codes = list(model.prompt_codes(audio, prompt_sample_rate or model.sample_rate))
    requests = [GenerationRequest(p, duration, top_k, top_p, temperature,
                                  model.cfg.cfg_coef if cfg_coef is None else cfg_coef,
                                  None if seed is None else seed + i, neg, prompt_codes=c)
                for i, (p, neg, c) in enumerate(zip(prompts, negs, codes, strict=True))]
    md = max_duration or model.max_duration
    if melody is not None:
        if not model.takes_melody:
            raise ValueError(f"{model.name} is not conditioned on a melody")
        wavs = melody if melody.dim() == 3 else melody[None].expand(len(prompts), -1, -1)
        if wavs.shape[0] != len(prompts):
            raise ValueError(f"{wavs.shape[0]} melodies for {len(prompts)} prompts")
        draws = iter(demucs_shifts) if demucs_shifts is not None else None
        shift = (lambda: next(draws)) if draws is not None else melody_shifts(model, 0 if seed is None else seed)
        windows = job_windows(model, requests[0], md, extend_stride)
        per_window = model.melody_chromas(wavs, melody_sample_rate or model.sample_rate, windows, shift,
                                          max_duration=md)
        for i, req in enumerate(requests):
            req.melody_chroma = [c[i] for c in per_window]
    state = {"done": 0, "total": 0}

    def report(_d: int, _t: int) -> None:
        state["done"] += 1
        if progress is not None:
            progress(state["done"] // len(requests), state["total"])

    jobs = [make_job(model, req, cond, report if progress else None, md, extend_stride)
            for req, cond in zip(requests, model.conditions(requests, joint=True), strict=True)]
    # The KV cache sized for the longest window these jobs use, not the model's whole context.
    # Compiled, at least 2 slots: a size of 1 would be specialised into the graph (the spare slot stays empty).
    slots = max(2, len(jobs)) if compile else len(jobs)
    batch = DecodeBatch(model.lm, slots, max(w.length for j in jobs for w in j.windows), device=model.device,
                        max_prefix=max(j.prefix_len for j in jobs))
    if compile:
        from soundry.engine.compiled_steps import CompiledSteps

        batch.static = CompiledSteps(batch, cache_dir=compile_cache).compile_now(len(jobs))
    for job in jobs:
        batch.admit(job)
    state["total"] = jobs[0].total_steps(batch.max_delay)
    while batch.jobs:
        batch.step()
    tokens = torch.stack([DecodeBatch.tokens_of(j) for j in jobs])
    return GenerationOutput(tokens, model.decode(tokens), model.sample_rate)

"""A loaded text-to-audio model: LM + text conditioner + codec, and its reference ``generate``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from soundry.engine.batch import DecodeBatch, Job
from soundry.engine.kv_cache import KVCache
from soundry.engine.request import GenerationRequest
from soundry.engine.windows import plan_windows
from soundry.models.checkpoint import LMConfig
from soundry.models.conditioner import TextConditioner
from soundry.models.lm import TransformerLM

DEFAULT_WINDOWS = {"audiogen": (10.0, 2.0), "musicgen": (30.0, 18.0)}  # max_duration, extend_stride


@dataclass
class GenerationOutput:
    tokens: torch.Tensor  # [B, K, T] int64
    audio: torch.Tensor  # [B, C, N] float32
    sample_rate: int


class AudioModel:
    """Everything one model needs to turn prompts into audio."""

    precision = "fp32"  # how the LM runs (soundry.engine.precision); the loader sets it

    def __init__(self, name: str, family: str, cfg: LMConfig, lm: TransformerLM, conditioner: TextConditioner,
                 codec, source: Path | None = None):
        self.name, self.family, self.cfg, self.source = name, family, cfg, source
        self.lm, self.conditioner, self.codec = lm, conditioner, codec
        self.max_duration, self.extend_stride = DEFAULT_WINDOWS[family]

    # -- facts -----------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return int(self.codec.sample_rate)

    @property
    def frame_rate(self) -> float:
        return float(self.codec.frame_rate)

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    def max_frames(self, max_duration: float | None = None) -> int:
        return int((max_duration or self.max_duration) * self.frame_rate)

    # -- conditions ------------------------------------------------------------------------------
    @torch.no_grad()
    def conditions(self, requests: list[GenerationRequest], joint: bool = False
                   ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per request: (cond [2, L, D], valid [2, L]) for the conditional and guidance rows.

        ``joint=False`` (the engine): each request is conditioned as audiocraft conditions it when
        generated alone, so its result does not depend on its neighbours. ``joint=True``: as
        audiocraft conditions a batch — all prompts padded together, padding attended to.
        """
        texts = [r.prompt for r in requests] + [r.negative_prompt or "" for r in requests]
        emb, mask = self.conditioner(texts)
        emb = emb.to(self.device, next(self.lm.parameters()).dtype)
        n, out = len(requests), []
        for i in range(n):
            pair = torch.stack([emb[i], emb[n + i]])
            if joint:
                valid = torch.ones(2, emb.shape[1], dtype=torch.bool, device=self.device)
            else:
                lengths = [max(1, int(mask[i].sum())), max(1, int(mask[n + i].sum()))]
                keep = max(lengths)
                pair = pair[:, :keep]
                limits = torch.tensor(lengths, device=self.device)[:, None]
                valid = torch.arange(keep, device=self.device)[None, :] < limits
            out.append((pair, valid))
        return out

    def make_job(self, request: GenerationRequest, cond: tuple[torch.Tensor, torch.Tensor],
                 progress: Callable[[int, int], None] | None = None,
                 max_duration: float | None = None, extend_stride: float | None = None) -> Job:
        # Whole frames covering the duration (audiocraft floors; equal when duration is a frame multiple).
        frames = math.ceil(request.duration * self.frame_rate - 1e-6)
        windows = plan_windows(frames / self.frame_rate, self.frame_rate, max_duration or self.max_duration,
                               extend_stride or self.extend_stride)
        if windows[0].length <= 0:
            raise ValueError(f"duration {request.duration}s is shorter than one frame at {self.frame_rate} Hz")
        if request.seed is None:  # pick one and record it, so any result can be reproduced
            request.seed = int(torch.randint(0, 2**62, ()).item())
        gen = torch.Generator(device=self.device)
        gen.manual_seed(request.seed)
        return Job(request, windows, cond[0], cond[1], gen, progress)

    # -- reference generation ----------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[str] | str, duration: float = 5.0, top_k: int = 250, top_p: float = 0.0,
                 temperature: float = 1.0, cfg_coef: float | None = None, seed: int | None = None,
                 negative_prompts: list[str] | None = None, max_duration: float | None = None,
                 extend_stride: float | None = None, progress: Callable[[int, int], None] | None = None
                 ) -> GenerationOutput:
        """Generate a batch of clips as audiocraft's ``generate`` does (joint conditioning).
        With ``seed``, prompt i uses seed + i. ``progress(done, total)`` counts decode steps."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        negs = negative_prompts or [None] * len(prompts)
        requests = [GenerationRequest(p, duration, top_k, top_p, temperature,
                                      self.cfg.cfg_coef if cfg_coef is None else cfg_coef,
                                      None if seed is None else seed + i, neg)
                    for i, (p, neg) in enumerate(zip(prompts, negs, strict=True))]
        md = max_duration or self.max_duration
        batch = DecodeBatch(self.lm, len(requests), self.max_frames(md), device=self.device)
        state = {"done": 0}
        jobs = []
        total = None

        def report(_d: int, _t: int) -> None:
            state["done"] += 1
            if progress is not None:
                progress(state["done"] // len(requests), total)

        for req, cond in zip(requests, self.conditions(requests, joint=True), strict=True):
            job = self.make_job(req, cond, report if progress else None, md, extend_stride)
            jobs.append(job)
            batch.admit(job)
        total = jobs[0].total_steps(batch.max_delay)
        while batch.jobs:
            batch.step()
        tokens = torch.stack([DecodeBatch.tokens_of(j) for j in jobs])
        return GenerationOutput(tokens, self.decode(tokens), self.sample_rate)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Codes [B, K, T] → audio [B, C, N] float32 on the CPU."""
        codec_device = next(self.codec.parameters()).device
        return self.codec.decode(tokens.to(codec_device)).float().cpu()

    @torch.no_grad()
    def teacher_logits(self, codes: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditional-branch logits for given codes [B, K, T], as audiocraft's compute_predictions:
        returns (logits [B, K, T, card] with NaN where the pattern gives no prediction, mask [B, K, T])."""
        B, K, T = codes.shape
        emb, _ = self.conditioner(prompts)
        emb = emb.to(self.device, next(self.lm.parameters()).dtype)
        cache = KVCache(self.lm, B, T + 1, max_cond_len=emb.shape[1])
        cache.set_condition(slice(0, B), emb, torch.ones(emb.shape[:2], dtype=torch.bool, device=self.device))
        steps = torch.arange(T + 1, device=self.device)
        t = steps[None, None, :] - 1 - torch.tensor(self.cfg.delays, device=self.device)[None, :, None]
        valid = (t >= 0) & (t < T)
        tok = codes.to(self.device).gather(2, t.clamp(0, T - 1).expand(B, K, -1))
        tok = torch.where(valid, tok, torch.full_like(tok, self.lm.special_token))
        hidden = self.lm.forward_cached(tok, torch.zeros(B, dtype=torch.long, device=self.device), cache,
                                        slice(0, B), cache.cross_mask[:B], key_len=T + 1)
        seq_logits = self.lm.logits(hidden).float()  # [B, K, T+1, card]
        frames = torch.arange(T, device=self.device)
        src = frames[None, :] + torch.tensor(self.cfg.delays, device=self.device)[:, None]  # step predicting (q, t)
        mask = src < T
        idx = src.clamp(max=T - 1)[None, :, :, None].expand(B, K, T, seq_logits.shape[-1])
        logits = seq_logits.gather(2, idx)
        logits = torch.where(mask[None, :, :, None], logits, torch.full_like(logits, float("nan")))
        return logits, mask[None].expand(B, K, T)

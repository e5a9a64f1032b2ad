"""What the engine is asked to do and what it gives back; no HTTP, no database."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import torch


@dataclass
class GenerationRequest:
    """One clip to generate. Sampling semantics follow DESIGN.md: top_k and top_p both filter;
    top_k=0 / top_p=0 disable their filter; top_k=1 is greedy. With ``prompt_codes`` the clip
    continues an audio prompt and ``duration`` is the total, prompt included."""

    prompt: str
    duration: float = 5.0
    top_k: int = 15
    top_p: float = 0.9
    temperature: float = 1.0
    cfg_coef: float = 3.0
    seed: int | None = None
    negative_prompt: str | None = None
    prompt_codes: torch.Tensor | None = None  # [K, P] audio-prompt codes to continue (AudioModel.prompt_codes)
    prompt_audio: torch.Tensor | None = None  # [C, N] an audio prompt; the engine encodes it into prompt_codes
    prompt_sample_rate: int | None = None
    melody: torch.Tensor | None = None  # [C, N] a tune to follow (melody models); the engine makes melody_chroma
    melody_sample_rate: int | None = None
    melody_chroma: list[torch.Tensor] | None = None  # per window, [chroma_len, n_chroma] (AudioModel.melody_chromas)
    steps: int | None = None  # diffusion models: denoising steps (None: the model's default); cfg_coef is guidance
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class GenerationResult:
    """tokens [K, T] int64 (an audio prompt's codes first), audio [C, N] float32 at sample_rate."""

    tokens: torch.Tensor
    audio: torch.Tensor
    sample_rate: int


class GenerationCanceled(Exception):
    """Raised from a request's future when it was canceled before it finished."""


def record_seed(request: GenerationRequest) -> int:
    """The request's seed; an unseeded request gets one, recorded, so any result can be reproduced."""
    if request.seed is None:
        request.seed = int(torch.randint(0, 2**62, ()).item())
    return request.seed

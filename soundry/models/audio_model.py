"""A loaded text-to-audio model: LM + text conditioner + codec (weights and the math around them;
decoding lives in ``soundry.engine``: ``soundry.engine.generate.generate`` is the reference loop)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from soundry.audio.convert import convert_audio
from soundry.models.checkpoint import LMConfig
from soundry.models.conditioner import TextConditioner
from soundry.models.lm import TransformerLM
from soundry.models.packed import weight_layout
from soundry.models.registry import FAMILY_WINDOWS
from soundry.models.transfer import to_device


class TextPrompt(Protocol):
    prompt: str
    negative_prompt: str | None


class AudioModel:
    """Everything one model needs to turn prompts into audio."""

    precision = "fp32"  # how the LM runs (soundry.models.precision); the loader sets it

    def __init__(self, name: str, family: str, cfg: LMConfig, lm: TransformerLM, conditioner: TextConditioner,
                 codec, source: Path | None = None):
        self.name, self.family, self.cfg, self.source = name, family, cfg, source
        self.lm, self.conditioner, self.codec = lm, conditioner, codec
        self.max_duration, self.extend_stride = FAMILY_WINDOWS[family]

    # -- facts -----------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return int(self.codec.sample_rate)

    @property
    def frame_rate(self) -> float:
        return float(self.codec.frame_rate)

    @property
    def weights(self) -> str:
        """How the LM holds its linear weights: ``packed``, ``int8`` or ``plain``."""
        return weight_layout(self.lm)

    @property
    def channels(self) -> int:
        return int(self.codec.channels)

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    def max_frames(self, max_duration: float | None = None) -> int:
        return int((max_duration or self.max_duration) * self.frame_rate)

    # -- conditions ------------------------------------------------------------------------------
    @torch.no_grad()
    def conditions(self, requests: list[TextPrompt], joint: bool = False
                   ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per request: (cond [2, L, D], valid [2, L]) for the conditional and guidance rows.

        ``joint=False`` (the engine): each request is conditioned as audiocraft conditions it when
        generated alone, so its result does not depend on its neighbours. ``joint=True``: as
        audiocraft conditions a batch — all prompts padded together, padding attended to.
        """
        texts = [r.prompt for r in requests] + [r.negative_prompt or "" for r in requests]
        counts: list[int] = []  # each text's token count, from the host-side mask (no device sync)
        emb, _mask = self.conditioner(texts, lengths=counts)
        emb = emb.to(self.device, next(self.lm.parameters()).dtype)
        n, out = len(requests), []
        for i in range(n):
            pair = torch.stack([emb[i], emb[n + i]])
            # transformers' MusicGen masks padded text positions in cross-attention (audiocraft attends to
            # them as zero vectors): a transformers-format model takes the per-row lengths even in a joint batch.
            if joint and self.cfg.layout != "transformers":
                valid = torch.ones(2, emb.shape[1], dtype=torch.bool, device=self.device)
            else:
                lengths = [max(1, counts[i]), max(1, counts[n + i])]
                keep = max(lengths)
                pair = pair[:, :keep]
                valid = torch.arange(keep)[None, :] < torch.tensor(lengths)[:, None]
                valid = to_device(valid, self.device)
            out.append((pair, valid))
        return out

    # -- audio prompts ---------------------------------------------------------------------------
    @torch.no_grad()
    def prompt_codes(self, audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Audio prompts [B, C, N] (or [C, N]) at ``sample_rate`` → codes [B, K, P] (or [K, P]), as
        audiocraft's ``generate_continuation`` prepares them: converted to the model's rate and
        channels, then encoded by the codec."""
        single = audio.dim() == 2
        audio = convert_audio(audio[None] if single else audio, sample_rate, self.sample_rate, self.channels)
        codec_device = next(self.codec.parameters()).device
        codes = self.codec.encode(audio.to(codec_device)).to(self.device)
        return codes[0] if single else codes

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Codes [B, K, T] → audio [B, C, N] float32 on the CPU."""
        codec_device = next(self.codec.parameters()).device
        return self.codec.decode(tokens.to(codec_device)).float().cpu()

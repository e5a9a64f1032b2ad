"""A loaded text-to-audio model: LM + text conditioner + codec (weights and the math around them;
decoding lives in ``soundry.engine``: ``soundry.engine.generate.generate`` is the reference loop)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Protocol

import torch

from soundry.audio.convert import convert_audio
from soundry.models.audiocraft.checkpoint import LMConfig
from soundry.models.audiocraft.conditioners.text import TextConditioner
from soundry.models.audiocraft.lm.precision import weight_layout
from soundry.models.audiocraft.lm.transformer import TransformerLM
from soundry.models.catalog import FAMILY_WINDOWS
from soundry.models.transfer import on_side_stream, to_device


class TextPrompt(Protocol):
    prompt: str
    negative_prompt: str | None


class AudioModel:
    """Everything one model needs to turn prompts into audio."""

    precision = "fp32"  # how the LM runs (soundry.models.audiocraft.lm.precision); the loader sets it

    def __init__(self, name: str, family: str, cfg: LMConfig, lm: TransformerLM, conditioner: TextConditioner,
                 codec, source: Path | None = None, melody=None):
        """``melody``: the chroma conditioner (``conditioners.melody.MelodyConditioner``) of a melody model."""
        self.name, self.family, self.cfg, self.source = name, family, cfg, source
        self.lm, self.conditioner, self.codec, self.melody = lm, conditioner, codec, melody
        self.max_duration, self.extend_stride = FAMILY_WINDOWS[family]
        if "self_wav" in cfg.prepend and melody is None:
            raise ValueError(f"{name} prepends a melody's chroma but was given no melody conditioner")
        self._null_wav_condition: torch.Tensor | None = None

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

    @property
    def takes_melody(self) -> bool:
        """Whether the model is conditioned on a melody (MusicGen-melody's chroma)."""
        return self.melody is not None

    @property
    def max_prefix(self) -> int:
        """The most positions a request's prepended conditions take (0: conditions via cross-attention)."""
        return self.prefix_len(self.conditioner.max_tokens)

    # -- conditions ------------------------------------------------------------------------------
    @torch.no_grad()
    def conditions(self, requests: list[TextPrompt], joint: bool = False
                   ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per request: (cond [2, L, D], valid [2, L]) for the conditional and guidance rows.

        ``joint=False`` (the engine): each request is conditioned as audiocraft conditions it when
        generated alone, so its result does not depend on its neighbours. ``joint=True``: as
        audiocraft conditions a batch — all prompts padded together, padding attended to.
        """
        if not joint and len(requests) > 1:  # each alone: encoded padded beside longer texts, T5 rounds differently
            return [c for r in requests for c in self.conditions([r])]
        texts = [r.prompt for r in requests] + [r.negative_prompt or "" for r in requests]
        counts: list[int] = []  # each text's token count, from the host-side mask (no device sync)
        emb, _mask = self.conditioner(texts, lengths=counts)
        emb = emb.to(self.device, next(self.lm.parameters()).dtype)
        n, out = len(requests), []
        for i in range(n):
            pair = torch.stack([emb[i], emb[n + i]])
            # transformers' MusicGen masks padded text positions in cross-attention (audiocraft attends to
            # them as zero vectors): a transformers-format model takes the per-row lengths even in a joint batch.
            # transformers' melody model prepends the text and attends to its padding (zero vectors), as audiocraft.
            if joint and (self.cfg.layout != "transformers" or self.cfg.prepend):
                valid = torch.ones(2, emb.shape[1], dtype=torch.bool, device=self.device)
            else:
                lengths = [max(1, counts[i]), max(1, counts[n + i])]
                keep = max(lengths)
                pair = pair[:, :keep]
                valid = torch.arange(keep)[None, :] < torch.tensor(lengths)[:, None]
                valid = to_device(valid, self.device)
            out.append((pair, valid))
        return out

    # -- prepended conditions (MusicGen-melody) ---------------------------------------------------
    def prefix_len(self, text_len: int) -> int:
        """Positions the prepended conditions take with a text of ``text_len`` tokens."""
        return sum(self.melody.chroma_len if name == "self_wav" else text_len for name in self.cfg.prepend)

    @torch.no_grad()
    def prefix(self, text: torch.Tensor, chroma: torch.Tensor | None) -> torch.Tensor:
        """The prepended conditions of one request's window: [2, P, D] for its conditional and guidance rows.

        ``text`` [2, L, D] as ``conditions`` gives it; ``chroma`` [T, n_chroma] the window's melody chroma
        (None: no melody). As in audiocraft: the guidance row's melody is the chroma of silence (classifier-free
        guidance nullifies every condition), so is a request's without a melody; the fuser prepends each
        condition in turn in the condition provider's order (text, then waveforms), so the chroma comes first.
        """
        parts = {"description": text}
        if "self_wav" in self.cfg.prepend:
            null = self._null_melody_condition()
            cond = null if chroma is None else self.melody(chroma[None].to(null.device))[0]
            parts["self_wav"] = torch.stack([cond, null]).to(text)
        return torch.cat([parts[name] for name in ("self_wav", "description") if name in self.cfg.prepend], dim=1)

    def _null_melody_condition(self) -> torch.Tensor:
        if self._null_wav_condition is None:
            self._null_wav_condition = self.melody(self.melody.null_chroma(1))[0]
        return self._null_wav_condition

    @torch.no_grad()
    def melody_chromas(self, melody: torch.Tensor, sample_rate: int, windows: list, shift: Callable[[], int],
                       cache: MutableMapping | None = None, max_duration: float | None = None) -> list[torch.Tensor]:
        """Melodies [B, C, N] at ``sample_rate`` → each window's chroma [B, chroma_len, n_chroma], as audiocraft's
        ``generate_with_chroma``: the melody at the model's rate and channels; one window (a clip within the
        context) sees it as given; beyond the context every window sees ``max_duration`` of it from the window's
        start, wrapping around. Each stem separation takes ``shift()`` (demucs's random time shift). ``cache``
        maps (melody digest, window start, shift) to a chroma already computed."""
        from soundry.models.audiocraft.conditioners.melody import melody_to_model

        wav = melody_to_model(melody, sample_rate, self.sample_rate, self.channels)
        digest = hashlib.blake2b(wav.float().cpu().numpy().tobytes(), digest_size=16).hexdigest()
        n, rate = wav.shape[-1], self.sample_rate
        span = int((max_duration or self.max_duration) * rate)
        out = []
        for w in windows:
            start = int(w.start / self.frame_rate * rate) if len(windows) > 1 else None
            draw = shift()
            key = (digest, start, draw)
            chroma = cache.get(key) if cache is not None else None
            if chroma is None:
                clip = wav if start is None else wav[..., (start + torch.arange(span)) % n]
                chroma = self.melody.chroma(clip, shift=draw)
                if cache is not None:
                    cache[key] = chroma
            out.append(chroma)
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
        codes = on_side_stream(codec_device, lambda: self.codec.encode(to_device(audio, codec_device)).to(self.device))
        return codes[0] if single else codes

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Codes [B, K, T] → audio [B, C, N] float32 on the CPU."""
        codec_device = next(self.codec.parameters()).device
        return self.codec.decode(tokens.to(codec_device)).float().cpu()

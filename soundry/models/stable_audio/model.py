"""A loaded Stable Audio model: the networks (diffusers'/transformers' modules) and the math around them that is
the model's, not the sampler's: prompt encoding as each diffusers pipeline does it, one batched DiT evaluation, and
the autoencoder decode with each pipeline's cut (SAO: no clamp; SA3: clamped to [-1, 1]).

The sampling loop, the schedules and the noise belong to ``soundry.engine.diffusion``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from soundry.models.stable_audio.catalog import StableAudioEntry


@dataclass
class Condition:
    """What one request's DiT rows read. ``context`` [1, S, D] cross-attention (+ ``mask`` [1, S] for SA3),
    ``global_states`` (SAO [1, 1, 2D], SA3 [1, D]); the unconditional branch's, when the request uses guidance."""

    context: torch.Tensor
    global_states: torch.Tensor
    mask: torch.Tensor | None = None
    uncond_context: torch.Tensor | None = None
    uncond_mask: torch.Tensor | None = None

    @property
    def guided(self) -> bool:
        return self.uncond_context is not None


class StableAudioModel:
    """Stable Audio Open 1.0 (``kind`` "sao") or Stable Audio 3 (``kind`` "sa3"), loaded from a diffusers folder."""

    is_diffusion = True
    takes_melody = False
    streams_live = False  # the audio exists once the last step is decoded

    def __init__(self, name: str, kind: str, parts: dict, source: Path | None = None,
                 entry: StableAudioEntry | None = None):
        self.name, self.kind, self.source, self.entry = name, kind, source, entry
        self.family = "stable-audio-open" if kind == "sao" else "stable-audio-3"
        self.transformer, self.vae = parts["transformer"], parts["vae"]
        self.text_encoder, self.tokenizer = parts["text_encoder"], parts["tokenizer"]
        self.projection = parts.get("projection_model")
        self.duration_embedder = parts.get("duration_embedder")
        self.scheduler_config: dict = parts["scheduler"]
        self.precision = "fp32"
        self.weights = "plain"
        self._rotary: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._empty: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # SA3's encoding of "" (default negative)

    # -- what the model is ------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The DiT's dtype (the precision's; the other networks are float32)."""
        return next(self.transformer.parameters()).dtype

    @property
    def sample_rate(self) -> int:
        return int(self.vae.config.sampling_rate)

    @property
    def channels(self) -> int:
        return int(self.vae.config.audio_channels)

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels if self.kind == "sao" else self.vae.config.latent_dim)

    @property
    def max_duration(self) -> float:
        """The longest clip, in seconds: SAO's DiT window (and its seconds embedding's range), SA3's duration
        embedding range, or the catalog's figure when it is lower."""
        if self.kind == "sao":
            window = self.transformer.config.sample_size * self.vae.hop_length / self.sample_rate
            most = min(window, float(self.projection.config.max_value))
        else:
            most = float(self.duration_embedder.config.max_val)
        return min(most, self.entry.max_duration) if self.entry is not None else most

    @property
    def default_steps(self) -> int:
        if self.entry is not None:
            return self.entry.default_steps
        return 100 if self.kind == "sao" or not self.scheduler_config.get("stochastic_sampling") else 8

    @property
    def default_guidance(self) -> float:
        return self.entry.default_guidance if self.entry is not None else (7.0 if self.kind == "sao" else 1.0)

    def latent_length(self, duration: float) -> int:
        """Latent frames the DiT runs on: SAO always its full ``sample_size``; SA3 ``ceil(duration·sr / ratio)``."""
        if self.kind == "sao":
            return int(self.transformer.config.sample_size)
        ratio = int(self.vae.downsampling_ratio)
        return int(math.ceil(duration * self.sample_rate / ratio)) * ratio // ratio

    def samples(self, duration: float) -> int:
        """Samples of the finished clip (Python float math, truncated, as both pipelines cut)."""
        return int(duration * self.sample_rate)

    def check_duration(self, duration: float) -> None:
        if not 0 < duration <= self.max_duration + 1e-9:
            raise ValueError(f"duration must be more than 0 and at most {self.max_duration:g} s for {self.name}, "
                             f"got {duration:g}")
        if self.samples(duration) < 1:
            raise ValueError(f"duration {duration:g} s is shorter than one sample at {self.sample_rate} Hz")

    # -- working memory (soundry.engine.memory budgets it) ----------------------------------------------
    def dit_row_bytes(self, length: int | None = None) -> int:
        """An estimate of the DiT's peak activations for one row at ``length`` latent frames (default: the longest
        clip's), from the shapes: per token the residual stream, its norm, q/k/v, the attention output and the
        SwiGLU feed-forward's 3 × inner, plus the attention scores and their softmax (heads × tokens × (tokens +
        text tokens), twice for SA3's differential attention) as if materialised — what SDPA's math path does on the
        CPU; flash kernels on a GPU need less. In the DiT's dtype. Not measured on a GPU yet."""
        cfg = self.transformer.config
        length = self.latent_length(self.max_duration) if length is None else length
        if self.kind == "sao":
            heads, dim, ff_inner = cfg.num_attention_heads, cfg.num_attention_heads * cfg.attention_head_dim, None
            tokens, maps = length + 1, 1
        else:
            heads, dim = cfg.num_heads, cfg.embed_dim
            ff_inner = int(dim * cfg.ff_mult)
            tokens = length // cfg.patch_size + cfg.num_memory_tokens
            maps = 2 if cfg.use_differential_attention else 1
        ff_inner = ff_inner or 4 * dim
        text = self.text_tokens + 2
        elem = torch.empty((), dtype=self.dtype).element_size()
        per_token = 8 * dim + 3 * ff_inner
        scores = 2 * maps * heads * tokens * (tokens + text)
        return int(elem * (tokens * per_token + scores))

    def state_bytes(self, length: int | None = None) -> int:
        """One request's float32 sampler state at ``length`` latent frames: its latents, model input and outputs,
        x0 and the solver's history, noise, and the Brownian tree's cached draws (16 latent-sized tensors)."""
        length = self.latent_length(self.max_duration) if length is None else length
        return 16 * 4 * self.latent_channels * length

    @property
    def text_tokens(self) -> int:
        """The text tokens a condition holds at most (what ``_tokens`` pads to)."""
        n = self.tokenizer.model_max_length
        return int(n if self.kind == "sao" else min(n, 256))

    @torch.no_grad()
    def largest_decode_activation(self, frames: int) -> int:
        """Bytes of the largest tensor any autoencoder module outputs while decoding ``frames`` latent frames
        (recorded by forward hooks)."""
        largest = 0

        def hook(_module, _inputs, output):
            nonlocal largest
            if isinstance(output, torch.Tensor):
                largest = max(largest, output.numel() * output.element_size())

        hooks = [m.register_forward_hook(hook) for m in self.vae.modules()]
        try:
            latents = torch.zeros(1, self.latent_channels, frames, device=self.device)
            self.vae.decode(latents.to(next(self.vae.parameters()).dtype))
        finally:
            for h in hooks:
                h.remove()
        return largest

    def decode_bytes(self, probe_frames: int = 8) -> int:
        """An estimate of the autoencoder decode's peak for the longest clip: the largest activation of a decode of
        ``probe_frames`` latent frames × 4 live tensors (a residual unit's input, activation, convolution and sum),
        scaled linearly to the longest clip's latent length (the decoders are convolutional, SAME's attention
        windowed). Float32, as the decode runs."""
        longest = self.latent_length(self.max_duration)
        return int(4 * self.largest_decode_activation(probe_frames) * longest / probe_frames)

    # -- conditioning ------------------------------------------------------------------------------
    def _tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.tokenizer(texts, padding="max_length", max_length=self.text_tokens, truncation=True,
                           return_tensors="pt")
        return t.input_ids.to(self.device), t.attention_mask.to(self.device)

    def _text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self._tokens(texts)
        return self.text_encoder(ids, attention_mask=mask)[0], mask

    @torch.no_grad()
    def encode_prompt(self, prompt: str, duration: float, guidance: float,
                      negative_prompt: str | None = None) -> Condition:
        """One request's condition, as the pipeline computes it for that request alone (batch 1). Guidance > 1 adds
        the unconditional branch: SAO's all-zero context without a negative prompt (T5 of the negative, padding
        zeroed, with one); SA3's encoding of the negative prompt or of ``""``."""
        guided = guidance > 1.0
        if self.kind == "sao":
            return self._encode_sao(prompt, duration, guided, negative_prompt)
        return self._encode_sa3(prompt, duration, guided, negative_prompt)

    def _encode_sao(self, prompt: str, duration: float, guided: bool, neg: str | None) -> Condition:
        emb, mask = self._text([prompt])
        masks = [mask]
        if guided and neg is not None:
            neg_emb, neg_mask = self._text([neg])
            neg_emb = torch.where(neg_mask.to(torch.bool).unsqueeze(2), neg_emb, 0.0)
            emb, masks = torch.cat([neg_emb, emb]), [neg_mask, mask]
        mask = torch.cat(masks)
        emb = self.projection(text_hidden_states=emb).text_hidden_states
        emb = emb * mask.unsqueeze(-1).to(emb.dtype)
        emb = emb * mask.unsqueeze(-1).to(emb.dtype)  # twice, as the pipeline does (no-op for a 0/1 mask)
        seconds = self.projection(start_seconds=torch.tensor([0.0], device=self.device),
                                  end_seconds=torch.tensor([float(duration)], device=self.device))
        start, end = seconds.seconds_start_hidden_states, seconds.seconds_end_hidden_states
        context = torch.cat([emb[-1:], start, end], dim=1)
        global_states = torch.cat([start, end], dim=2)
        if not guided:
            return Condition(context, global_states)
        uncond = torch.cat([emb[:1], start, end], dim=1) if neg is not None else torch.zeros_like(context)
        return Condition(context, global_states, uncond_context=uncond)

    def _encode_sa3(self, prompt: str, duration: float, guided: bool, neg: str | None) -> Condition:
        seconds = torch.tensor([float(duration)], dtype=torch.float32, device=self.device)
        global_states = self.duration_embedder(seconds)
        token = global_states.unsqueeze(1)

        def branch(text: str) -> tuple[torch.Tensor, torch.Tensor]:
            if text == "":  # every guided request without a negative prompt: encoded once (batch 1, the same call)
                key = (self.device, next(self.text_encoder.parameters()).dtype)
                if key not in self._empty:
                    self._empty[key] = self._text([""])
                emb, mask = self._empty[key]
            else:
                emb, mask = self._text([text])
            return (torch.cat([emb, token.to(emb.dtype)], dim=1),
                    torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1))

        context, mask = branch(prompt)
        if not guided:
            return Condition(context, global_states, mask)
        uncond, uncond_mask = branch(neg if neg is not None else "")
        return Condition(context, global_states, mask, uncond, uncond_mask)

    # -- one DiT evaluation for a batch of rows ----------------------------------------------------------
    def rotary(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """SAO's rotary table for ``length`` latent frames (+1: the global token the DiT prepends)."""
        if length not in self._rotary:
            from diffusers.models.embeddings import get_1d_rotary_pos_embed

            dim = self.transformer.config.attention_head_dim // 2
            cos, sin = get_1d_rotary_pos_embed(dim, length + 1, use_real=True, repeat_interleave_real=False)
            self._rotary[length] = (cos.to(self.device), sin.to(self.device))
        return self._rotary[length]

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, global_states: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """The DiT's output for rows ``x`` [B, C, L] (already scaled as the sampler's model input), each at its own
        timestep [B], with its own context and global conditioning. Float32 out."""
        dt = self.dtype
        if self.kind == "sao":
            out = self.transformer(x.to(dt), timesteps, encoder_hidden_states=context.to(dt),
                                   global_hidden_states=global_states.to(dt), rotary_embedding=self.rotary(x.shape[-1]),
                                   return_dict=False)[0]
        else:
            out = self.transformer(x.to(dt), timesteps, encoder_hidden_states=context.to(dt),
                                   global_hidden_states=global_states.to(dt), encoder_attention_mask=mask,
                                   return_dict=False)[0]
        return out.float()

    # -- audio -------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, latents: torch.Tensor, duration: float) -> torch.Tensor:
        """Final latents [B, C, L] → audio [B, channels, samples(duration)] float32: cut as the pipeline cuts
        (SAO from 0 without a clamp; SA3 clamped to [-1, 1])."""
        audio = self.vae.decode(latents.to(next(self.vae.parameters()).dtype)).sample.float()
        audio = audio[:, :, :self.samples(duration)]
        return audio.clamp(-1.0, 1.0) if self.kind == "sa3" else audio

    def to(self, device: torch.device | str) -> StableAudioModel:
        for m in (self.transformer, self.vae, self.text_encoder, self.projection, self.duration_embedder):
            if m is not None:
                m.to(device)
        self._rotary.clear()
        self._empty.clear()
        return self


def load_stable_audio(folder: Path | str, name: str | None = None, device: torch.device | str = "cpu",
                      entry: StableAudioEntry | None = None, precision: str = "fp32") -> StableAudioModel:
    """Build a ``StableAudioModel`` from a diffusers-layout folder (checked by ``loader.read_index``): the DiT in
    ``precision`` (fp32, bf16 or fp16), the rest in float32 (``soundry.models.stable_audio.precision``); a half
    precision is tried with one DiT forward here (PrecisionError if the device cannot run it)."""
    from soundry.models.stable_audio.loader import load_components
    from soundry.models.stable_audio.precision import check_precision, keep_fp32_

    folder = Path(folder)
    kind, parts = load_components(folder, precision)
    keep_fp32_(parts["transformer"])
    model = StableAudioModel(name or folder.name, kind, parts, source=folder, entry=entry).to(device)
    model.precision = precision
    if precision != "fp32":
        check_precision(model, precision)
    return model

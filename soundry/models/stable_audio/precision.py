"""Precision of a Stable Audio model: the served ``precision`` setting (``auto | fp32 | bf16 | fp16 | int8``), the same
one the autoregressive LMs read (``soundry.models.audiocraft.lm.precision``).

- ``auto`` is bf16 on a GPU that supports it and fp32 on the CPU (``resolve_precision``, shared with the LMs).
- bf16 / fp16: **the DiT only** runs in half precision — it is where the time goes (every step, every row, twice
  with guidance). Inside it diffusers already computes what is sensitive in float32 (SA3's RMSNorm ``force_fp32``,
  both DiTs' rotary products); soundry keeps SA3's rotary table (``rotary_pos_emb.inv_freq``) in float32 as well,
  since positions from ``arange`` in bf16 are rounded past 256 latent frames. SAO's rotary table is soundry's own,
  float32.
- float32 always: the text encoder (T5 / T5Gemma; once per request: T5 is known to overflow in fp16 — transformers
  keeps its ``wo`` in float32 for that reason), the projection / duration embedder (tiny), and the autoencoder
  decode (Oobleck / SAME; once per request, off the loop: the waveform's last layers in bf16 would round every
  sample to 8 bits of mantissa, a noise floor around −48 dB). The sampler's state — sigmas, the latents between
  steps, the guidance mix, the noise — is float32 in every precision (``soundry.engine.diffusion.samplers``).
  diffusers' pipelines, with ``torch_dtype=torch.float16``, cast everything, latents between steps included; this is
  deliberately more conservative for the parts that run once per request, where half precision saves little time.
- int8: there is no int8 DiT here. The setting quantises the LMs' linear layers (CPU only); a Stable Audio model
  served by the same process runs in fp32 instead, says so in the log, and the model list reports ``fp32``.

``check_precision`` runs one tiny DiT forward after loading, so a precision the device cannot run fails at load
with a sentence, not in a request.
"""

from __future__ import annotations

import logging

import torch

from soundry.models.audiocraft.lm.precision import DTYPES, PrecisionError

log = logging.getLogger(__name__)

REDUCED_PARTS = ("transformer",)  # the components loaded in the precision's dtype; the others are float32


def family_precision(precision: str, name: str = "the model") -> str:
    """The precision a Stable Audio model runs in for a resolved setting (``int8`` → ``fp32``, logged)."""
    if precision == "int8":
        log.warning("precision int8 quantises the autoregressive LMs only; %s (Stable Audio) runs in fp32", name)
        return "fp32"
    if precision not in DTYPES:
        raise PrecisionError(f"precision {precision!r} is not available for Stable Audio models (fp32, bf16, fp16; "
                             f"int8 runs them in fp32)")
    return precision


def part_dtype(part: str, precision: str) -> torch.dtype:
    """The dtype a component is loaded in."""
    return DTYPES[precision] if part in REDUCED_PARTS else torch.float32


def keep_fp32_(transformer: torch.nn.Module) -> torch.nn.Module:
    """SA3's rotary table back in float32 (a no-op for SAO's DiT, which reads soundry's float32 table)."""
    rotary = getattr(transformer, "rotary_pos_emb", None)
    if rotary is not None and hasattr(rotary, "inv_freq"):
        rotary.inv_freq = rotary.inv_freq.float()
    return transformer


def check_precision(model, precision: str) -> None:
    """One DiT evaluation of one row at a short length; PrecisionError naming the precision if the device has no
    kernel for it or the output is not finite."""
    device = model.device
    seconds = min(1.0, model.max_duration)
    try:
        cond = model.encode_prompt("", seconds, 1.0)
        x = torch.zeros(1, model.latent_channels, model.latent_length(seconds), device=device)
        out = model.denoise(x, torch.full((1,), 0.5, device=device), cond.context, cond.global_states, cond.mask)
    except (RuntimeError, NotImplementedError) as exc:
        raise PrecisionError(f"precision {precision} does not run on {device.type} here for {model.name}: "
                             f"{exc}") from exc
    if not torch.isfinite(out).all():
        raise PrecisionError(f"precision {precision} gives a non-finite DiT output on {device.type} for {model.name}")

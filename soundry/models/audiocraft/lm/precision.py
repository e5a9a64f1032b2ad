"""Precision of the LM, a served setting: ``auto | fp32 | bf16 | fp16 | int8``.

``auto`` is bf16 on a GPU that supports it (``torch.cuda.is_bf16_supported()``; fp32 on one that does
not) and fp32 on the CPU. In bf16 and fp16 the linear layers, embeddings and KV cache are half precision
while the residual stream, every LayerNorm and the output heads stay float32 (``keep_fp32_``): what
audiocraft's autocast computes, and what keeps guidance (which multiplies the logits' difference by ~3)
from amplifying half-precision rounding of the residual and the logits. ``int8`` quantises the LM's
linear layers (CPU only, see ``soundry.models.audiocraft.lm.quantize``). The text encoder and codec always run in
float32; only the LM, which is where the decode time goes, changes. ``check_precision`` runs one tiny
forward right after loading, so a precision the device cannot run fails at load with a sentence, not mid-request.
"""

from __future__ import annotations

import torch
from torch import nn

from soundry.config import PRECISIONS
from soundry.models.audiocraft.lm import rows_kernel
from soundry.models.audiocraft.lm.packed import can_pack, is_packed, pack_linears_
from soundry.models.audiocraft.lm.quantize import is_quantized, quantize_lm

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(ValueError):
    """The precision is unknown or cannot run on this device."""


def resolve_precision(precision: str | None, device: torch.device | str) -> str:
    """``auto``/None → bf16 on CUDA, fp32 elsewhere; anything else is checked and returned."""
    p = (precision or "auto").strip().lower()
    if p not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if p == "auto":
        if torch.device(device).type != "cuda":
            return "fp32"
        return "bf16" if _cuda_bf16_supported(device) else "fp32"
    if p == "int8" and torch.device(device).type != "cpu":
        raise PrecisionError("precision int8 runs on the CPU only; on a GPU use bf16 (or auto)")
    return p


def _cuda_bf16_supported(device: torch.device | str) -> bool:
    """Whether the GPU has bf16 kernels (Ampere and later). Without CUDA there is nothing to ask (the
    load fails anyway, with torch's own message)."""
    if not torch.cuda.is_available():
        return True
    with torch.cuda.device(torch.device(device)):
        return bool(torch.cuda.is_bf16_supported())


def keep_fp32_(lm: nn.Module) -> nn.Module:
    """Mixed precision in place: every LayerNorm and the output heads (``lm.linears``) back in float32,
    and the residual stream in float32 (``TransformerLM.residual_dtype``); the other weights keep
    their half-precision dtype."""
    for module in lm.modules():
        if isinstance(module, nn.LayerNorm):
            module.float()
    lm.linears.float()
    if lm.heads is not None:
        lm.heads.float()
    lm.residual_dtype = torch.float32
    return lm


def apply_precision(lm: nn.Module, precision: str, device: torch.device | str, packed: bool | str = True,
                    fused_heads: bool = False) -> nn.Module:
    """Move a float LM to ``device`` in the resolved ``precision`` (quantising for int8). On the CPU ``packed``
    picks the linear layers' kernel: True or ``"auto"`` — in fp32 soundry's few-row kernel where it builds
    (``soundry.models.audiocraft.lm.rows_kernel``), otherwise (and in bf16) oneDNN's packed layout
    (``soundry.models.audiocraft.lm.packed``); ``"onednn"`` — always oneDNN's; False — plain ``nn.Linear``.
    ``fused_heads`` makes the output heads one matmul (``TransformerLM.fuse_heads_``)."""
    device = torch.device(device)
    if fused_heads:
        lm.fuse_heads_()
    if precision == "int8":
        return quantize_lm(lm.to(device, torch.float32), "int8")
    dtype = DTYPES[precision]
    lm = lm.to(device, dtype)
    if dtype != torch.float32:
        keep_fp32_(lm)
    if not packed or device.type != "cpu":
        return lm
    mode = "auto" if packed is True else packed
    if dtype == torch.float32 and rows_kernel.available(mode):
        rows_kernel.use_rows_kernel_(lm)  # the layers it does not fit (outputs not a multiple of 16) go on to oneDNN
    if can_pack(dtype, device) and can_pack(torch.float32, device):
        pack_linears_(lm)
    return lm


def check_precision(lm: nn.Module, precision: str, device: torch.device | str) -> None:
    """Run a 1-step forward of the LM; raise PrecisionError naming the precision if the device
    lacks a kernel for it (e.g. an op without a float16 CPU implementation)."""
    from soundry.models.audiocraft.lm.kv_cache import KVCache

    device = torch.device(device)
    try:
        with torch.no_grad():
            cache = KVCache(lm, 1, 2, max_cond_len=1, device=device)
            dim = lm.cfg.dim
            cache.set_condition(slice(0, 1), torch.zeros(1, 1, dim, device=device),
                                torch.ones(1, 1, dtype=torch.bool, device=device))
            tokens = torch.full((1, lm.cfg.n_q, 1), lm.cfg.card, dtype=torch.long, device=device)
            hidden = lm.forward_cached(tokens, torch.zeros(1, dtype=torch.long, device=device), cache, slice(0, 1),
                                       cache.cross_mask[:1], key_len=1)
            logits = lm.logits(hidden).float()
    except (RuntimeError, NotImplementedError) as exc:
        raise PrecisionError(f"precision {precision} does not run on {device.type} here: {exc}") from exc
    if not torch.isfinite(logits).all():
        raise PrecisionError(f"precision {precision} gives non-finite logits on {device.type} for this model")


def describe_lm_precision(lm: nn.Module) -> str:
    """The precision a loaded LM actually runs in (fp32, bf16, fp16 or int8)."""
    if is_quantized(lm):
        return "int8"
    dtype = next(p for p in lm.parameters() if p.is_floating_point()).dtype
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype).replace("torch.", ""))


def weight_layout(lm: nn.Module) -> str:
    """How a loaded LM holds its linear weights: ``rows`` (soundry's CPU kernel, ``rows_kernel``), ``packed``
    (oneDNN), ``int8`` (dynamic quantised) or ``plain`` (``nn.Linear``)."""
    if rows_kernel.uses_rows_kernel(lm):
        return "rows"
    if is_packed(lm):
        return "packed"
    return "int8" if is_quantized(lm) else "plain"

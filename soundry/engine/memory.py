"""How many requests' KV cache fit on the GPU: sized from the device's free memory at engine start.

musicgen-large holds ~1.2 GB of bf16 keys and values per request (2 rows × 48 layers × 30 s of
positions), so 64 slots need ~80 GB: ``max_batch`` alone would fail with an out-of-memory error at
the first allocation, or later in a step. The engine instead serves as many slots as its budget holds,
says so in the log when that is fewer than ``max_batch``, and refuses with a sentence naming the
figures when not even one fits.

The budget is the worst case, not the typical one: each slot's cross-attention cache for the longest
text the encoder reads (``max_text_tokens``; on a GPU the engine allocates it at that size once, so it is
never reallocated and no old and new copies are ever held together), and it is the smaller of
``kv_cache_memory`` × free memory and free memory less ``RESERVE``: what the rest of the process needs
on the same device besides the KV cache — CUDA graph pools and a step's activations (tens of MB at
musicgen-large's sizes), the codec decoding a 30 s clip, MultiBand Diffusion or demucs while one runs
(each about 1 GB; estimated from their activations, not measured on a GPU yet). A second model's engine
in the same process sizes its cache from what is free when it starts.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

GiB = 1 << 30


class KVCacheTooLarge(RuntimeError):
    """Not even one request's KV cache fits in the memory the setting allows."""


RESERVE = 4 * GiB  # device memory left to everything but the KV cache (see above)
MAX_TEXT_TOKENS = 256  # the default max_text_tokens (soundry.config): the longest condition a slot holds


def kv_bytes_per_slot(lm, max_frames: int, max_cond_len: int = MAX_TEXT_TOKENS, dtype: torch.dtype | None = None,
                      max_prefix: int = 0) -> int:
    """Bytes of one slot (two rows: conditional and guidance) of ``DecodeBatch``'s cache: self-attention
    K/V over the window's positions (after a prepended condition of up to ``max_prefix``) and cross-attention
    K/V over ``max_cond_len`` condition tokens (none for a model without cross-attention)."""
    return sum(_kv_parts(lm, max_frames, max_cond_len, dtype, max_prefix))


def _kv_parts(lm, max_frames: int, max_cond_len: int, dtype: torch.dtype | None, max_prefix: int) -> tuple[int, int]:
    """(self-attention, cross-attention) bytes of one slot."""
    cfg = lm.cfg
    dtype = dtype or lm.emb[0].weight.dtype
    per_position = 2 * 2 * cfg.num_layers * cfg.dim * torch.empty((), dtype=dtype).element_size()  # 2 rows, K and V
    positions = max_frames + max(cfg.delays) + 1 + max_prefix
    return per_position * positions, per_position * (max_cond_len if cfg.cross_attention else 0)


def fit_slots(lm, max_slots: int, max_frames: int, device: torch.device | str, fraction: float,
              name: str = "the model", max_prefix: int = 0, max_cond_len: int = MAX_TEXT_TOKENS,
              reserve: int = RESERVE) -> int:
    """``max_slots``, or fewer on a GPU whose budget (the smaller of ``fraction`` × free memory and free
    memory less ``reserve``) holds fewer slots' KV cache at its worst case."""
    device = torch.device(device)
    if device.type != "cuda":
        return max_slots
    if not 0 < fraction <= 1:
        raise ValueError(f"kv_cache_memory must be a fraction in (0, 1], got {fraction}")
    free, _total = torch.cuda.mem_get_info(device)
    own, cross = _kv_parts(lm, max_frames, max_cond_len, None, max_prefix)
    per_slot = own + cross
    budget = max(0, min(int(free * fraction), free - reserve))
    slots = min(max_slots, budget // per_slot)
    if slots < 1:
        positions = max_frames + max(lm.cfg.delays) + 1 + max_prefix
        raise KVCacheTooLarge(
            f"the KV cache of one request of {name} needs {per_slot / GiB:.2f} GiB ({own / GiB:.2f} GiB of "
            f"self-attention over {positions} positions, {cross / GiB:.2f} GiB of cross-attention over "
            f"{max_cond_len if lm.cfg.cross_attention else 0} text tokens), but {device} has {free / GiB:.2f} GiB "
            f"free and kv_cache_memory={fraction:g} allows {budget / GiB:.2f} GiB of it, keeping "
            f"{reserve / GiB:.2f} GiB for the codec, graphs and post-processing; free GPU memory, raise "
            f"kv_cache_memory, lower max_text_tokens or use a smaller model")
    if slots < max_slots:
        log.warning("KV cache: %d slots of %s need %.1f GiB (%.2f GiB each at %d text tokens) but %s has "
                    "%.1f GiB free (kv_cache_memory=%g, %.1f GiB reserved): serving %d requests at a time "
                    "instead of max_batch=%d", max_slots, name, max_slots * per_slot / GiB, per_slot / GiB,
                    max_cond_len, device, free / GiB, fraction, reserve / GiB, slots, max_slots)
    return int(slots)

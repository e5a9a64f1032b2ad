"""How many requests' KV cache fit on the GPU: sized from the device's free memory at engine start.

musicgen-large holds ~1.2 GB of bf16 keys and values per request (2 rows × 48 layers × 30 s of
positions), so 64 slots need ~80 GB: ``max_batch`` alone would fail with an out-of-memory error at
the first allocation, or later in a step. The engine instead serves as many slots as fit in
``kv_cache_memory`` (a fraction) of the free memory, says so in the log when that is fewer than
``max_batch``, and refuses with a sentence naming the figures when not even one fits.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

GiB = 1 << 30


class KVCacheTooLarge(RuntimeError):
    """Not even one request's KV cache fits in the memory the setting allows."""


def kv_bytes_per_slot(lm, max_frames: int, max_cond_len: int = 64, dtype: torch.dtype | None = None,
                      max_prefix: int = 0) -> int:
    """Bytes of one slot (two rows: conditional and guidance) of ``DecodeBatch``'s cache: self-attention
    K/V over the window's positions (after a prepended condition of up to ``max_prefix``) and cross-attention
    K/V over the base condition length."""
    cfg = lm.cfg
    dtype = dtype or lm.emb[0].weight.dtype
    positions = max_frames + max(cfg.delays) + 1 + max_prefix + (max_cond_len if cfg.cross_attention else 0)
    return 2 * 2 * cfg.num_layers * cfg.dim * positions * torch.empty((), dtype=dtype).element_size()


def fit_slots(lm, max_slots: int, max_frames: int, device: torch.device | str, fraction: float,
              name: str = "the model", max_prefix: int = 0) -> int:
    """``max_slots``, or fewer on a GPU whose free memory (× ``fraction``) holds fewer slots' KV cache."""
    device = torch.device(device)
    if device.type != "cuda":
        return max_slots
    if not 0 < fraction <= 1:
        raise ValueError(f"kv_cache_memory must be a fraction in (0, 1], got {fraction}")
    free, _total = torch.cuda.mem_get_info(device)
    per_slot = kv_bytes_per_slot(lm, max_frames, max_prefix=max_prefix)
    budget = int(free * fraction)
    slots = min(max_slots, budget // per_slot)
    if slots < 1:
        raise KVCacheTooLarge(
            f"the KV cache of one request of {name} needs {per_slot / GiB:.2f} GiB, but {device} has "
            f"{free / GiB:.2f} GiB free and kv_cache_memory={fraction:g} allows {budget / GiB:.2f} GiB of it; "
            f"free GPU memory, raise kv_cache_memory or use a smaller model")
    if slots < max_slots:
        log.warning("KV cache: %d slots of %s need %.1f GiB but %s has %.1f GiB free (kv_cache_memory=%g): "
                    "serving %d requests at a time instead of max_batch=%d", max_slots, name,
                    max_slots * per_slot / GiB, device, free / GiB, fraction, slots, max_slots)
    return int(slots)

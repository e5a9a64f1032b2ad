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
in the same process sizes its cache from what is free when it starts, less what diffusion engines have claimed
(below): their working memory is allocated step by step, not at start, so it is not yet missing from free memory.

**Diffusion engines** (``fit_diffusion_batch``) budget each request's working memory at its worst: two DiT rows
(guidance doubles them) at the model's longest latent length (``StableAudioModel.dit_row_bytes``: activations from
the DiT's shapes) plus its float32 sampler state, and, once, the autoencoder decoding the longest clip (one decode
at a time, on the engine's decode thread: ``StableAudioModel.decode_bytes``). On a GPU the budget is the smaller of
``fraction`` × free memory and free memory less ``DIFFUSION_RESERVE`` (the text encoder's run at admission, allocator
fragmentation, the process's other work); on the CPU ``fraction`` × the kernel's ``MemAvailable`` (the host's RAM:
a batch of full-length SAO rows and a 47 s decode run to gigabytes; what is in use is already not available, and no
fixed reserve, so a small host still serves a small model). ``max_batch`` is the cap either way. The engine
``claim``s what it budgeted for as long as it runs, and every engine that sizes itself later in the process (either
family) counts the claims of the others as used.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

GiB = 1 << 30


class MemoryBudgetTooSmall(RuntimeError):
    """Not even one request's working memory fits in what the engine may use: the engine refuses every request
    with this sentence (it names the sizes)."""


class KVCacheTooLarge(MemoryBudgetTooSmall):
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
    free = max(0, free - claimed(device))
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


# -- diffusion engines ------------------------------------------------------------------------------------------
DIFFUSION_RESERVE = 2 * GiB  # GPU memory left to all but the DiT rows and the decode (see the module docstring)


class DiffusionMemoryTooLarge(MemoryBudgetTooSmall):
    """Not even one request's DiT rows, sampler state and the decode fit in the memory the engine may use."""


_claims: dict[int, tuple[str, int]] = {}  # id(owner) -> (device, bytes)
_claims_lock = threading.Lock()


def _key(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return str(device)


def claim(owner: object, device: torch.device | str, nbytes: int) -> None:
    """``owner`` (an engine) will use up to ``nbytes`` on ``device`` while it runs; replaces its earlier claim."""
    with _claims_lock:
        _claims[id(owner)] = (_key(device), int(nbytes))


def release(owner: object) -> None:
    with _claims_lock:
        _claims.pop(id(owner), None)


def claimed(device: torch.device | str, exclude: object | None = None) -> int:
    """Bytes claimed on ``device`` by engines other than ``exclude``."""
    key = _key(device)
    with _claims_lock:
        return sum(n for owner, (d, n) in _claims.items() if d == key and owner != id(exclude))


def host_available() -> int | None:
    """The kernel's estimate of memory available to a new allocation (Linux ``MemAvailable``), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def fit_diffusion_batch(row_bytes: int, state_bytes: int, decode_bytes: int, max_batch: int,
                        device: torch.device | str, fraction: float, name: str = "the model", owner: object = None,
                        reserve: int | None = None) -> tuple[int, int]:
    """(requests stepped together, bytes budgeted for them and the decode): ``max_batch``, or fewer where the
    budget (see the module docstring) holds fewer requests of two DiT rows of ``row_bytes`` and ``state_bytes`` of
    sampler state each, after ``decode_bytes`` for the decode. Claims of other engines on the device count as used.
    Raises DiffusionMemoryTooLarge naming the sizes when not even one request fits."""
    if not 0 < fraction <= 1:
        raise ValueError(f"diffusion_memory must be a fraction in (0, 1], got {fraction}")
    device = torch.device(device)
    per_request = 2 * row_bytes + state_bytes
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        where, reserve = f"{device}", DIFFUSION_RESERVE if reserve is None else reserve
    else:
        free = host_available()
        if free is None:  # no figure to budget from: max_batch is the cap
            return max_batch, max_batch * per_request + decode_bytes
        where, reserve = "the host (MemAvailable)", 0 if reserve is None else reserve
    others = claimed(device, exclude=owner)
    free = max(0, free - others)
    budget = max(0, min(int(free * fraction), free - reserve))
    requests = min(max_batch, max(0, budget - decode_bytes) // per_request)
    if requests < 1:
        raise DiffusionMemoryTooLarge(
            f"one request of {name} needs {per_request / GiB:.2f} GiB ({2 * row_bytes / GiB:.2f} GiB for its two DiT "
            f"rows at the longest clip, {state_bytes / GiB:.3f} GiB of sampler state) besides "
            f"{decode_bytes / GiB:.2f} GiB for decoding the longest clip, but {where} has {free / GiB:.2f} GiB free"
            f"{f' after {others / GiB:.2f} GiB claimed by the engines of other models' if others else ''} and "
            f"diffusion_memory={fraction:g} allows {budget / GiB:.2f} GiB of it, keeping {reserve / GiB:.2f} GiB in "
            f"reserve; free memory, raise diffusion_memory, serve fewer models in this process or use a smaller model")
    if requests < max_batch:
        log.warning("%s: %d requests at a time need %.1f GiB (%.2f GiB each, two DiT rows at the longest clip, and "
                    "%.2f GiB for a decode) but %s has %.1f GiB free (diffusion_memory=%g, %.1f GiB reserved): "
                    "serving %d requests at a time instead of max_batch=%d", name, max_batch,
                    (max_batch * per_request + decode_bytes) / GiB, per_request / GiB, decode_bytes / GiB, where,
                    free / GiB, fraction, reserve / GiB, requests, max_batch)
    return int(requests), int(requests * per_request + decode_bytes)

"""Random numbers from a seed and a counter: the same on every device, drawn with no generator state.

``DecodeBatch`` (``rng="counter"``) gives each slot the uniforms ``counter_uniforms(seed, draw, K)``
where ``draw`` counts the request's steps: a few element-wise integer kernels for the whole batch,
instead of one generator call per request, with nothing held on the host, drawn inside the decode step
(``DecodeBatch.decode``), hence inside a captured CUDA graph. The hash (murmur3's 32-bit
finaliser, applied to the counter, then mixed with each half of the seed) uses only integer
operations whose results stay below 2**63, so it is exact, and equal, on the CPU and on any GPU: a
seed gives the same tokens wherever it runs (``torch.Generator`` streams differ between CPU and
CUDA). The uniforms have 24 random bits, exactly representable in float32.
"""

from __future__ import annotations

import torch

M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for 0 <= x < 2**32, in two 16-bit halves of ``c`` (no int64 overflow)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & M32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def counter_uniforms(seeds: torch.Tensor, draws: torch.Tensor, K: int) -> torch.Tensor:
    """seeds, draws [n] int64 (seeds ≥ 0) → uniforms [n, K] float32 in [0, 1)."""
    k = torch.arange(K, device=seeds.device)
    h = _fmix32(((draws[:, None] * K + k[None, :]) & M32) ^ 0x9E3779B9)
    h = _fmix32(h ^ (seeds[:, None] & M32))
    h = _fmix32(h ^ ((seeds[:, None] >> 32) & M32))
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))

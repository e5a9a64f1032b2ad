"""Per-row sampling with top-k AND top-p filtering (DESIGN.md §1), driven by given uniforms.

Each row brings its own temperature, top_k (0 = off), top_p (0 = off) and one uniform number per
codebook drawn from the request's own generator, so a seeded request samples the same tokens
whatever else shares its batch. top_k=1 is exactly greedy.
"""

from __future__ import annotations

import torch


def apply_cfg(logits: torch.Tensor, cfg_coef: torch.Tensor) -> torch.Tensor:
    """logits [n, 2, K, V] (conditional, unconditional) → guided logits [n, K, V]."""
    cond, uncond = logits[:, 0], logits[:, 1]
    return uncond + (cond - uncond) * cfg_coef.view(-1, 1, 1)


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           uniforms: torch.Tensor, max_k: int | None = None) -> torch.Tensor:
    """Sample one token per (row, codebook).

    logits [n, K, V]; temperature, top_p [n] float; top_k [n] long (0 = no limit); uniforms [n, K]
    in [0, 1). ``max_k`` (host int, optional) bounds the candidates to sort: pass max(top_k) when
    every row has top_k > 0. Returns [n, K] int64.
    """
    n, K, V = logits.shape
    probs = torch.softmax(logits.float() / temperature.view(-1, 1, 1).float(), dim=-1)
    k = V if not max_k or max_k <= 0 else min(int(max_k), V)
    if k < V:
        sorted_probs, order = torch.topk(probs, k, dim=-1, sorted=True)
    else:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    rank = torch.arange(sorted_probs.shape[-1], device=logits.device)
    limit = torch.where(top_k > 0, top_k, torch.full_like(top_k, V)).view(-1, 1, 1)
    keep = rank.view(1, 1, -1) < limit
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    p = top_p.view(-1, 1, 1).float()
    keep = keep & ((p <= 0) | (mass_before <= p))
    keep[..., 0] = True
    weights = sorted_probs * keep
    cdf = torch.cumsum(weights, dim=-1)
    target = uniforms.view(n, K, 1).to(cdf.dtype) * cdf[..., -1:]
    choice = (cdf <= target).sum(dim=-1, keepdim=True)
    choice = torch.minimum(choice, keep.sum(dim=-1, keepdim=True) - 1)
    return order.gather(-1, choice).squeeze(-1)

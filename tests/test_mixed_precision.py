"""bf16 (and fp16) is mixed precision: half-precision linear weights and KV cache, with the residual
stream, the LayerNorms and the output heads in float32, as audiocraft's autocast computes."""

from __future__ import annotations

import copy

import pytest
import torch

from soundry.models.audiocraft.lm.kv_cache import KVCache
from soundry.models.audiocraft.lm.packed import can_pack, is_packed
from soundry.models.audiocraft.lm.precision import apply_precision, resolve_precision
from soundry.models.audiocraft.lm.transformer import TransformerLM
from tests.helpers_models import random_lm


@pytest.fixture(scope="module")
def fp32_lm():
    return random_lm(num_layers=6, seed=3)


@torch.no_grad()
def _logits(lm: TransformerLM, seed: int = 0) -> torch.Tensor:
    """Teacher-forced logits [R, K, S, card] of random tokens and a random condition."""
    g = torch.Generator().manual_seed(seed)
    R, S, L, dim = 4, 24, 12, lm.cfg.dim
    dtype = lm.emb[0].weight.dtype
    cache = KVCache(lm, R, S + 1, max_cond_len=L, device="cpu")
    cache.set_condition(slice(0, R), torch.randn(R, L, dim, generator=g).to(dtype), torch.ones(R, L, dtype=torch.bool))
    tokens = torch.randint(0, lm.cfg.card, (R, lm.cfg.n_q, S), generator=g)
    hidden = lm.forward_cached(tokens, torch.zeros(R, dtype=torch.long), cache, slice(0, R),
                               cache.cross_mask[:R], key_len=S)
    return lm.logits(hidden)


def _rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.float() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("packed", [False, True])
def test_bf16_keeps_residual_norms_and_heads_in_fp32_and_is_closer_to_fp32(fp32_lm, packed):
    if packed and not (can_pack(torch.bfloat16, "cpu") and can_pack(torch.float32, "cpu")):
        pytest.skip("this CPU has no oneDNN bf16 packed linear")
    ref = _logits(fp32_lm)
    mixed = apply_precision(copy.deepcopy(fp32_lm), "bf16", "cpu", packed=packed)
    assert is_packed(mixed) == packed
    assert mixed.emb[0].weight.dtype == torch.bfloat16 and mixed.out_norm.weight.dtype == torch.float32
    assert all(ln.weight.dtype == torch.float32 for layer in mixed.layers for ln in (layer.norm1, layer.norm2))
    all_bf16 = copy.deepcopy(fp32_lm).to(torch.bfloat16)  # the old bf16: everything in bfloat16

    got = _logits(mixed)
    assert got.dtype == torch.float32
    err_mixed, err_bf16 = _rel_err(got, ref), _rel_err(_logits(all_bf16), ref)
    assert err_mixed < 2e-2, err_mixed  # within bf16 tolerance (8 bits of mantissa, a few layers deep)
    assert err_mixed < err_bf16, (err_mixed, err_bf16)


def test_auto_is_bf16_only_on_a_gpu_that_supports_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", lambda d: __import__("contextlib").nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **kw: False)
    assert resolve_precision("auto", "cuda") == "fp32"
    assert resolve_precision("bf16", "cuda") == "bf16"  # asked for explicitly: check_precision tries it at load
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **kw: True)
    assert resolve_precision("auto", "cuda") == "bf16"

"""The CPU eager step's shortcuts give bitwise what they replace (issue 31): the positional terms looked up
from ``KVCache.position_table``, and attention masks converted to SDPA's additive form once a forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from soundry.models.audiocraft.lm import transformer
from soundry.models.audiocraft.lm.kv_cache import KVCache
from tests.helpers_models import random_lm


@pytest.fixture(scope="module")
def lm():
    return random_lm(num_layers=3, seed=5)


def test_position_table_holds_the_terms_computed_per_step(lm):
    cache = KVCache(lm, 2, 300, device="cpu")
    positions = torch.tensor([[0, 1, 2], [17, 150, 299]])
    assert torch.equal(cache.position_table[positions], lm.position_terms(positions, torch.float32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_additive_mask_gives_sdpa_the_same_result(dtype):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 1 if i == 0 else 40, 32, generator=g).to(dtype) for i in range(3))
    mask = torch.rand(3, 1, 1, 40, generator=g) > 0.4
    mask[..., 0] = True
    for m in (mask, torch.ones_like(mask)):
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
        assert torch.equal(F.scaled_dot_product_attention(q, k, v, attn_mask=transformer._additive_mask(m, dtype)),
                           expected)


@torch.no_grad()
def test_forward_cached_is_bitwise_the_same_without_the_shortcuts(lm, monkeypatch):
    g = torch.Generator().manual_seed(1)
    R, S, L = 4, 6, 9

    def run() -> torch.Tensor:
        cache = KVCache(lm, R, S + 2, max_cond_len=L, device="cpu")
        valid = torch.ones(R, L, dtype=torch.bool)
        valid[1, 5:] = False
        cache.set_condition(slice(0, R), cond, valid)
        first = lm.forward_cached(tokens[..., :S], torch.zeros(R, dtype=torch.long), cache, slice(0, R),
                                  cache.cross_mask[:R], key_len=S)
        step = lm.forward_cached(tokens[..., S:], torch.tensor([S, S, S - 2, S - 1]), cache, slice(0, R),
                                 cache.cross_mask[:R], key_len=S + 1)
        return torch.cat([first, step], dim=1)

    cond = torch.randn(R, L, lm.cfg.dim, generator=g)
    tokens = torch.randint(0, lm.cfg.card, (R, lm.cfg.n_q, S + 1), generator=g)
    new = run()
    monkeypatch.setattr(transformer, "_additive_mask", lambda mask, dtype: mask)
    original_init = KVCache.__init__

    def without_table(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.position_table = None

    monkeypatch.setattr(KVCache, "__init__", without_table)
    assert torch.equal(run(), new)

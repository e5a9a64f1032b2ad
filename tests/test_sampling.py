"""The sampler on known logits: top-k AND top-p, temperature, greedy, per-row parameters."""

import torch

from soundry.engine.sampling import apply_cfg, sample

V = 8
LOGITS = torch.log(torch.tensor([0.30, 0.25, 0.15, 0.10, 0.08, 0.06, 0.04, 0.02]))
GRID = 4000  # uniforms (i + 0.5) / GRID give the exact sampled distribution to within 1/GRID


def distribution(top_k=0, top_p=0.0, temperature=1.0, logits=LOGITS, max_k=None):
    u = (torch.arange(GRID, dtype=torch.float64) + 0.5) / GRID
    n = GRID
    toks = sample(logits.expand(n, 1, V), torch.full((n,), temperature), torch.full((n,), top_k, dtype=torch.long),
                  torch.full((n,), top_p), u.view(n, 1).float(), max_k=max_k)
    return torch.bincount(toks.view(-1), minlength=V).double() / n


def renorm(p, keep):
    q = torch.where(keep, p, torch.zeros_like(p))
    return q / q.sum()


def test_top_k_only_keeps_k_most_likely_renormalised():
    p = torch.softmax(LOGITS.double(), -1)
    for k in (1, 2, 3, 5):
        d = distribution(top_k=k, max_k=k)
        assert torch.allclose(d, renorm(p, torch.arange(V) < k), atol=2 / GRID)


def test_top_p_keeps_the_nucleus():
    p = torch.softmax(LOGITS.double(), -1)
    # mass before each token: 0, .30, .55, .70, .80, .88, .94, .98 -> top_p=0.6 keeps the first 3
    d = distribution(top_p=0.6)
    assert torch.allclose(d, renorm(p, torch.arange(V) < 3), atol=2 / GRID)


def test_top_k_and_top_p_both_apply():
    p = torch.softmax(LOGITS.double(), -1)
    assert torch.allclose(distribution(top_k=2, top_p=0.9), renorm(p, torch.arange(V) < 2), atol=2 / GRID)
    assert torch.allclose(distribution(top_k=6, top_p=0.6), renorm(p, torch.arange(V) < 3), atol=2 / GRID)


def test_zero_disables_each_filter():
    p = torch.softmax(LOGITS.double(), -1)
    assert torch.allclose(distribution(top_k=0, top_p=0.0), p, atol=2 / GRID)


def test_temperature_sharpens_and_flattens():
    for t in (0.5, 2.0):
        expected = torch.softmax(LOGITS.double() / t, -1)
        assert torch.allclose(distribution(temperature=t), expected, atol=2 / GRID)
    assert distribution(temperature=0.5)[0] > distribution(temperature=1.0)[0] > distribution(temperature=2.0)[0]


def test_top_k_one_is_argmax_for_any_uniform_and_temperature():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 4, 2048, generator=g)
    u = torch.rand(64, 4, generator=g)
    for t in (0.3, 1.0, 5.0):
        toks = sample(logits, torch.full((64,), t), torch.ones(64, dtype=torch.long), torch.full((64,), 0.9), u)
        assert torch.equal(toks, logits.argmax(-1))


def test_rows_use_their_own_parameters():
    logits = LOGITS.expand(2, 1, V).clone()
    u = torch.full((2, 1), 0.99)
    toks = sample(logits, torch.ones(2), torch.tensor([1, 0]), torch.zeros(2), u)
    assert toks[0, 0] == 0  # greedy row
    assert toks[1, 0] == V - 1  # unfiltered row reaches the tail with u=0.99


def test_cfg_combines_conditional_and_unconditional():
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(3, 4, 16, generator=g), torch.randn(3, 4, 16, generator=g)
    coef = torch.tensor([0.0, 1.0, 3.0])
    out = apply_cfg(torch.stack([cond, uncond], dim=1), coef)
    assert torch.allclose(out[0], uncond[0]) and torch.allclose(out[1], cond[1])
    assert torch.allclose(out[2], uncond[2] + 3 * (cond[2] - uncond[2]), atol=1e-5)  # float rounding differs

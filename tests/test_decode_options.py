"""Decode options built for the GPU (issue 24, item 7), each behind a setting and off by default: on the
CPU each gives the tokens it gives off (no speed is claimed; bench/gpu_check.sh is where they get measured)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import soundry.models.audiocraft.lm.transformer as lm_module
from soundry.engine import Engine, GenerationRequest
from soundry.engine.counter_rng import counter_uniforms
from soundry.models import load_model
from tests.helpers_models import TINY, assert_close_rel, tiny_model
from tests.helpers_teacher import teacher_logits

PROMPTS = [("rain on a tin roof", 3), ("a dog barking twice", 4)]


def _serve(model, requests=PROMPTS, duration=0.6, top_k=250, **options) -> list[torch.Tensor]:
    engine = Engine(model, max_batch=2, **options).start()
    try:
        futures = [engine.submit(GenerationRequest(p, duration, top_k=top_k, seed=s)) for p, s in requests]
        return [f.result(timeout=120).tokens for f in futures]
    finally:
        engine.stop()


@pytest.mark.parametrize("kind", ["audiogen", "musicgen"])
def test_fused_output_heads_give_the_same_logits_and_tokens(kind):
    plain, fused = tiny_model(kind), load_model(str(TINY[kind]), device="cpu", fused_heads=True)
    assert fused.lm.heads is not None and len(fused.lm.linears) == 0
    codes = torch.randint(0, 16, (1, plain.cfg.n_q, 10), generator=torch.Generator().manual_seed(0))
    (a, mask), (b, _) = teacher_logits(plain, codes, ["rain"]), teacher_logits(fused, codes, ["rain"])
    assert_close_rel(b[mask], a[mask], rel=1e-5)
    for x, y in zip(_serve(plain), _serve(fused), strict=True):
        assert torch.equal(x, y)


def _numpy_uniforms(seed: int, draw: int, K: int) -> np.ndarray:
    """The counter hash in numpy uint32 arithmetic (wrapping multiplies): an independent reference."""
    def fmix(h):
        h = h ^ (h >> np.uint32(16))
        h = h * np.uint32(0x85EBCA6B)
        h = h ^ (h >> np.uint32(13))
        h = h * np.uint32(0xC2B2AE35)
        return h ^ (h >> np.uint32(16))

    with np.errstate(over="ignore"):
        h = fmix((np.arange(K, dtype=np.uint32) + np.uint32((draw * K) & 0xFFFFFFFF)) ^ np.uint32(0x9E3779B9))
        h = fmix(h ^ np.uint32(seed & 0xFFFFFFFF))
        h = fmix(h ^ np.uint32(seed >> 32))
    return (h >> np.uint32(8)).astype(np.float64) / (1 << 24)


def test_counter_uniforms_are_exact_integer_math():
    """Exact integer arithmetic (no float, no overflow), so any device computes these same numbers."""
    seeds = torch.tensor([0, 1, 12345, 2**62 - 7, 987654321987])
    draws = torch.tensor([0, 5, 1499, 3, 70000])
    got = counter_uniforms(seeds, draws, 4)
    want = np.stack([_numpy_uniforms(int(s), int(d), 4) for s, d in zip(seeds, draws, strict=True)])
    assert got.dtype == torch.float32 and np.array_equal(got.numpy().astype(np.float64), want)
    many = counter_uniforms(torch.full((4096,), 7), torch.arange(4096), 4)
    assert 0 <= float(many.min()) and float(many.max()) < 1 and abs(float(many.mean()) - 0.5) < 0.02


def test_counter_rng_a_seed_gives_its_tokens_whatever_shares_the_batch():
    """With per-request attention (exact whatever the batch's lengths: tests/test_gpu_path_ii.py, item 7) the
    tokens are the request's own, however the engine's admission interleaves the two (the other one a step or
    more ahead or not); the draw counters alone would not make them so with attention over the batch's keys."""
    model = tiny_model("musicgen")
    alone = _serve(model, [PROMPTS[1]], rng="counter", attention="per_request")[0]
    together = _serve(model, [PROMPTS[0], PROMPTS[1]], rng="counter", attention="per_request")[1]
    assert torch.equal(alone, together)
    # the uniforms differ from the generator's, so sampled tokens do; greedy ones are the same on and off
    assert not torch.equal(alone, _serve(model, [PROMPTS[1]])[0])
    assert all(torch.equal(a, b) for a, b in zip(_serve(model, top_k=1, rng="counter"), _serve(model, top_k=1),
                                                 strict=True))


def test_counter_rng_is_drawn_inside_the_static_step_with_the_same_tokens(monkeypatch):
    """With static steps (CUDA graphs on a GPU; run eagerly here) the uniforms are drawn inside the step
    from the slots' seeds and counters, nothing is copied into the graph's input buffer, and the greedy tokens
    are the dynamic step's."""
    from soundry.engine.static_steps import StaticSteps

    copied = []
    real_step = StaticSteps.step

    def step(self, n, uniforms):
        copied.append(uniforms is not None)
        return real_step(self, n, uniforms)

    monkeypatch.setattr(StaticSteps, "step", step)
    model = tiny_model("audiogen")
    static = _serve(model, rng="counter", static_steps=True)
    assert copied and not any(copied) and all(len(t) for t in static)
    # Tokens: a static step attends over its key bucket and the dynamic step over the batch's keys, masked alike; the
    # sums over the real keys round differently with the length (~1e-7 of the logits), which can flip a token drawn
    # from the tiny model's near-flat distribution with top_k 250 (and two requests share steps or not as the
    # threads meet). Greedy tokens follow the logits themselves: the static step's are the dynamic step's.
    greedy = [_serve(model, [request], top_k=1, rng="counter", static_steps=True)[0] for request in PROMPTS]
    assert all(torch.equal(a, _serve(model, [r], top_k=1, rng="counter")[0])
               for a, r in zip(greedy, PROMPTS, strict=True))


@pytest.mark.parametrize("kind", ["audiogen", "musicgen"])
def test_attention_over_real_lengths_gives_the_masked_tokens(kind, monkeypatch):
    model = tiny_model(kind)
    unmasked = []
    real_attend = lm_module.attend

    def attend(q, k, v, mask):
        unmasked.append(mask is None)
        return real_attend(q, k, v, mask)

    monkeypatch.setattr(lm_module, "attend", attend)
    masked = _serve(model, attention="masked")
    assert not any(unmasked)
    lengths = _serve(model, attention="lengths")
    assert any(unmasked)  # the two requests step together: their self-attention ran without a mask
    for a, b in zip(masked, lengths, strict=True):
        assert torch.equal(a, b)


def test_unknown_decode_options_are_refused_by_name():
    with pytest.raises(ValueError, match="rng must be generator or counter \\(got 'philox'\\)"):
        Engine(tiny_model("audiogen"), rng="philox")


def test_the_settings_refuse_unknown_decode_options_by_name(tmp_path, monkeypatch):
    from soundry.config import Settings

    def load():
        return Settings.load(config_file=str(tmp_path / "none.toml"), data_dir=str(tmp_path), finalize=False)

    monkeypatch.setenv("SOUNDRY_RNG", "Counter")
    assert load().rng == "counter"
    monkeypatch.setenv("SOUNDRY_ATTENTION", "flash")
    with pytest.raises(ValueError, match="setting attention: 'flash' is not one of masked, lengths"):
        load()
    monkeypatch.setenv("SOUNDRY_ATTENTION", "lengths")
    monkeypatch.setenv("SOUNDRY_KV_CACHE_MEMORY", "1.5")
    with pytest.raises(ValueError, match=r"setting kv_cache_memory: 1.5 is not a fraction in \(0, 1\]"):
        load()

"""The engine reproduces what audiocraft 1.3.0 computes with the tiny reference checkpoints."""

import pytest
import torch

from soundry.engine.generate import generate, teacher_logits
from tests.helpers_models import assert_close_rel, golden, tiny_model

KINDS = ["audiogen", "musicgen", "musicgen-stereo"]


@pytest.mark.parametrize("kind", KINDS)
def test_t5_tokens_hidden_and_condition(kind):
    g, m = golden(kind), tiny_model(kind)
    tok = m.conditioner.tokenize(g["prompts"])
    assert torch.equal(tok["input_ids"], g["t5_input_ids"])
    assert torch.equal(tok["attention_mask"], g["t5_mask"])
    assert_close_rel(m.conditioner.t5_hidden(g["prompts"]), g["t5_hidden"])
    emb, mask = m.conditioner(g["prompts"])
    assert torch.equal(mask, g["condition_mask"])
    assert_close_rel(emb, g["condition"])


@pytest.mark.parametrize("kind", KINDS)
def test_teacher_forced_logits(kind):
    g, m = golden(kind), tiny_model(kind)
    logits, mask = teacher_logits(m, g["teacher_codes"], g["prompts"])
    assert torch.equal(mask, g["teacher_mask"])
    assert_close_rel(logits[mask], g["teacher_logits"][g["teacher_mask"]])


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_generation(kind):
    g, m = golden(kind), tiny_model(kind)
    out = generate(m, g["prompts"][:2], duration=g["greedy_duration"], top_k=1, cfg_coef=g["cfg_coef"])
    assert torch.equal(out.tokens, g["greedy_tokens"])
    assert out.sample_rate == g["sample_rate"]
    assert out.audio.shape == g["greedy_wav"].shape
    assert_close_rel(out.audio, g["greedy_wav"])


@pytest.mark.parametrize("kind", KINDS)
def test_long_generation_crosses_the_context(kind):
    g, m = golden(kind), tiny_model(kind)
    out = generate(m, g["prompts"][:1], duration=g["long_duration"], top_k=1, cfg_coef=g["cfg_coef"],
                     max_duration=g["max_duration"], extend_stride=g["extend_stride"])
    assert torch.equal(out.tokens, g["long_tokens"])
    assert_close_rel(out.audio, g["long_wav"])


@pytest.mark.parametrize("kind", KINDS)
def test_codec_decode(kind):
    g, m = golden(kind), tiny_model(kind)
    assert m.frame_rate == g["frame_rate"] and m.sample_rate == g["sample_rate"]
    assert_close_rel(m.decode(g["decode_codes"]), g["decode_wav"])

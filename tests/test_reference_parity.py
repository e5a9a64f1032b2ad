"""The engine reproduces what audiocraft 1.3.0 computes with the tiny reference checkpoints."""

import pytest
import torch

from soundry.engine.generate import generate
from tests.helpers_models import assert_close_rel, golden, tiny_model
from tests.helpers_teacher import teacher_logits

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


def test_the_text_encoder_sees_at_most_max_tokens():
    """A prompt longer than the configured maximum is truncated by the tokenizer (its beginning and
    the end-of-sequence token are kept); shorter prompts are tokenized exactly as before."""
    from soundry.models import load_model
    from tests.helpers_models import TINY

    m = load_model(str(TINY["audiogen"]), device="cpu", max_text_tokens=16)
    long_prompt = "a dog barks while rain falls on a tin roof and cars pass by " * 20
    tok = m.conditioner.tokenize([long_prompt, "rain"])
    assert tok["input_ids"].shape[1] == 16
    eos = m.conditioner.tokenizer.eos_token_id
    assert tok["input_ids"][0, -1] == eos and int(tok["attention_mask"][0].sum()) == 16
    untruncated = tiny_model("audiogen").conditioner
    full = untruncated.tokenize([long_prompt])["input_ids"]
    assert full.shape[1] > 16 and torch.equal(tok["input_ids"][0, :15], full[0, :15])
    short = untruncated.tokenize(["rain"])["input_ids"][0]
    assert torch.equal(tok["input_ids"][1, : len(short)], short)
    emb, mask = m.conditioner([long_prompt])
    assert emb.shape[1] == mask.shape[1] == 16

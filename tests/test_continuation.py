"""Continuation from an audio prompt reproduces audiocraft 1.3.0's ``generate_continuation``
(tests/data/*/continuation.pt; tests/data/REFERENCE.md says how they were made).

Tokens must match exactly. The only divergence the project accepts is at an exact fp32 tie (two
candidate logits within 1e-5 of each other, where float summation order picks the winner); none
occurs in these fixtures, so the comparisons below are exact.
"""

import pytest
import torch

from soundry.engine.generate import generate
from tests.helpers_models import assert_close_rel, continuation, tiny_model

KINDS = ["audiogen", "musicgen", "musicgen-stereo"]


@pytest.mark.parametrize("kind", KINDS)
def test_encoder_latent_and_prompt_codes(kind):
    c, m = continuation(kind), tiny_model(kind)
    assert m.channels == c["channels"]
    assert_close_rel(m.codec.latent(c["prompt_wav"]), c["prompt_latent"])
    codes = m.prompt_codes(c["prompt_wav"], c["prompt_sample_rate"])
    assert torch.equal(codes, c["prompt_codes"])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", ["continuation", "long_continuation"])
def test_continuation_matches_audiocraft(kind, case):
    c, m = continuation(kind), tiny_model(kind)
    out = generate(m, c[f"{case}_descriptions"], duration=c[f"{case}_duration"], top_k=1, cfg_coef=c["cfg_coef"],
                   max_duration=c["max_duration"], extend_stride=c["extend_stride"],
                   prompt_audio=c["prompt_wav"][0], prompt_sample_rate=c["prompt_sample_rate"])
    P = c["prompt_codes"].shape[-1]
    assert torch.equal(out.tokens[..., :P], c["prompt_codes"])
    assert torch.equal(out.tokens, c[f"{case}_tokens"])
    assert out.audio.shape == c[f"{case}_wav"].shape
    assert_close_rel(out.audio, c[f"{case}_wav"])


def test_prompt_at_another_rate_and_channel_count_is_converted():
    """A stereo 48 kHz prompt for the mono 16 kHz model: averaged to mono, resampled with soxr."""
    m = tiny_model("audiogen")
    t = torch.arange(48000 // 2) / 48000
    stereo = torch.stack([torch.sin(2 * torch.pi * 440 * t), torch.sin(2 * torch.pi * 660 * t)]) * 0.3
    codes = m.prompt_codes(stereo, 48000)
    assert codes.shape == (m.cfg.n_q, 25)  # 0.5 s at 50 Hz
    mono16 = m.prompt_codes(stereo.mean(0, keepdim=True)[:, ::3], 16000)  # same signal, naive decimation
    assert codes.shape == mono16.shape


def test_prompt_longer_than_the_clip_is_refused():
    m = tiny_model("audiogen")
    with pytest.raises(ValueError, match="audio prompt"):
        generate(m, ["x"], duration=0.2, top_k=1, prompt_audio=torch.zeros(1, 16000), prompt_sample_rate=16000)

"""The ``precision`` setting applies to Stable Audio models too (soundry.models.stable_audio.precision): the DiT in
bf16/fp16, the text encoder, projection and autoencoder in float32, the sampler's state in float32; int8 runs this
family in fp32; a precision the device cannot run fails at load with a sentence.

Tolerance (stated in docs/stable-audio.md): on the tiny models a half-precision DiT gives finite audio within 5% of
the fp32 clip's peak for bf16 (measured ≤ 2.2%) and 1% for fp16 (measured ≤ 0.31%)."""

import logging
from functools import cache

import pytest
import torch

from soundry.engine.generate import generate
from soundry.models import load_model
from soundry.models.audiocraft.lm.precision import PrecisionError
from soundry.models.stable_audio.model import StableAudioModel
from tests.test_stable_audio_parity import FOLDERS, golden
from tests.test_stable_audio_parity import model as fp32_model

TOLERANCE = {"bf16": 0.05, "fp16": 0.01}  # of the fp32 clip's peak
CASES = {"sa3": 2, "sao": 2}  # a guided case of each (SA3: guidance 3.0, 8 steps; SAO: 4.5 and a negative prompt)


@cache
def half(kind, precision):
    return load_model(str(FOLDERS[kind]), device="cpu", precision=precision)


def run(model, kind):
    g, i = golden(kind), CASES[kind]
    return generate(model, [g["prompts"][i]], duration=g["durations"][i], seed=g["seeds"][i],
                    cfg_coef=g["guidance_scales"][i], steps=g["steps"][i],
                    negative_prompts=[g["negative_prompts"][i]])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("kind", ["sa3", "sao"])
def test_a_half_precision_dit_gives_finite_audio_close_to_fp32(kind, precision):
    want, got = run(fp32_model(kind), kind), run(half(kind, precision), kind)
    assert torch.isfinite(got.audio).all() and got.audio.dtype == torch.float32
    assert got.audio.shape == want.audio.shape
    peak = want.audio.abs().max()
    assert (got.audio - want.audio).abs().max() <= TOLERANCE[precision] * peak
    assert (got.audio - want.audio).abs().max() > 0  # the DiT did run in half precision
    assert got.latents.dtype == torch.float32  # the sampler's state stays float32


@pytest.mark.parametrize("kind", ["sa3", "sao"])
def test_only_the_dit_is_half_precision(kind):
    m = half(kind, "bf16")
    assert m.precision == "bf16" and m.dtype == torch.bfloat16
    for part in (m.vae, m.text_encoder, m.projection, m.duration_embedder):
        if part is not None:
            assert {p.dtype for p in part.parameters()} == {torch.float32}
    rotary = getattr(m.transformer, "rotary_pos_emb", None)
    if rotary is not None:  # SA3: positions past 256 would round in bf16
        assert rotary.inv_freq.dtype == torch.float32
    assert m._rotary == {} or all(t.dtype == torch.float32 for pair in m._rotary.values() for t in pair)


def test_auto_is_fp32_on_the_cpu_and_int8_runs_this_family_in_fp32(caplog):
    assert load_model(str(FOLDERS["sa3"]), device="cpu", precision="auto").precision == "fp32"
    with caplog.at_level(logging.WARNING):
        m = load_model(str(FOLDERS["sa3"]), device="cpu", precision="int8")
    assert m.precision == "fp32" and m.dtype == torch.float32
    assert "int8 quantises the autoregressive LMs only" in caplog.text and "runs in fp32" in caplog.text


def test_a_precision_the_device_cannot_run_fails_at_load_with_a_sentence(monkeypatch):
    def no_kernel(self, *args, **kwargs):
        raise RuntimeError('"addmm" not implemented for \'Half\'')

    monkeypatch.setattr(StableAudioModel, "denoise", no_kernel)
    with pytest.raises(PrecisionError, match="precision fp16 does not run on cpu here for stable-audio-3-tiny"):
        load_model(str(FOLDERS["sa3"]), device="cpu", precision="fp16")
    load_model(str(FOLDERS["sa3"]), device="cpu", precision="fp32")  # fp32 is not probed: nothing to refuse


def test_a_non_finite_half_precision_output_is_refused_at_load(monkeypatch):
    monkeypatch.setattr(StableAudioModel, "denoise", lambda self, x, *a, **kw: torch.full_like(x, float("inf")))
    with pytest.raises(PrecisionError, match="non-finite DiT output"):
        load_model(str(FOLDERS["sao"]), device="cpu", precision="bf16")

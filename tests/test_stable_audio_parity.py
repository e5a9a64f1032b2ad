"""The diffusion family reproduces what diffusers 0.42.1's own pipelines compute with the tiny Stable Audio
folders (tests/data/stable-audio-*-tiny, made by tests/data/make_stable_audio.py; see its README section)."""

import json
import shutil
from functools import cache

import pytest
import torch

from soundry.engine.generate import generate
from soundry.models.errors import CheckpointError
from tests.helpers_models import DATA

FOLDERS = {"sao": DATA / "stable-audio-open-tiny", "sa3": DATA / "stable-audio-3-tiny"}
CASES = [("sao", i) for i in range(4)] + [("sa3", i) for i in range(5)]


@cache
def model(kind):
    from soundry.models import load_model

    return load_model(str(FOLDERS[kind]), device="cpu")


@cache
def golden(kind):
    return torch.load(FOLDERS[kind] / "stable_audio_golden.pt", weights_only=True)


def run_case(kind, i, **kw):
    g = golden(kind)
    return generate(model(kind), [g["prompts"][i]], duration=g["durations"][i], seed=g["seeds"][i],
                    cfg_coef=g["guidance_scales"][i], steps=g["steps"][i],
                    negative_prompts=[g["negative_prompts"][i]], **kw)


@pytest.mark.parametrize("kind,i", CASES)
def test_each_golden_case_within_1e4(kind, i):
    g = golden(kind)
    out = run_case(kind, i)
    want = g["audio"][i]
    assert out.sample_rate == g["sample_rate"]
    assert out.audio[0].shape == want.shape
    assert (out.audio[0] - want).abs().max() <= 1e-4 * want.abs().max()
    assert (out.latents[0] - g["latents"][i]).abs().max() <= 1e-4 * g["latents"][i].abs().max()


@pytest.mark.parametrize("kind", ["sao", "sa3"])
def test_tokens_and_model_facts(kind):
    g, m = golden(kind), model(kind)
    ids, mask = m._tokens([g["prompts"][0]])
    assert torch.equal(ids[0], g["input_ids"][0]) and torch.equal(mask[0], g["attention_mask"][0])
    assert (m.sample_rate, m.channels) == (g["sample_rate"], g["channels"])
    if kind == "sa3":
        assert [m.latent_length(d) for d in g["durations"]] == g["latent_lengths"]
    else:
        assert m.max_duration == pytest.approx(g["max_seconds"])


@pytest.mark.parametrize("kind", ["sao", "sa3"])
def test_a_batch_of_two_seeds_gives_each_alone_result(kind):
    """Prompt i uses seed + i: the pair (cases 0 and 1) in one call equals each case alone (within 1e-5: the
    batched DiT may round differently from batch 1)."""
    g = golden(kind)
    (a, b), = g["batch_pairs"]
    out = generate(model(kind), [g["prompts"][a], g["prompts"][b]], duration=g["durations"][a], seed=g["seeds"][a],
                   cfg_coef=g["guidance_scales"][a], steps=g["steps"][a])
    for row, case in enumerate((a, b)):
        assert (out.audio[row] - g["audio"][case]).abs().max() <= 1e-5


def test_changing_the_seed_or_prompt_moves_the_audio():
    """The parity above is not vacuous: another seed or another prompt is far outside the tolerance."""
    g = golden("sa3")
    base = run_case("sa3", 0).audio[0]
    other_seed = generate(model("sa3"), [g["prompts"][0]], duration=g["durations"][0], seed=g["seeds"][0] + 7,
                          cfg_coef=1.0, steps=g["steps"][0]).audio[0]
    assert (other_seed - base).abs().max() > 1e-2


def copy_folder(tmp_path, kind="sao"):
    dst = tmp_path / "m"
    shutil.copytree(FOLDERS[kind], dst)
    return dst


def test_a_pickled_weight_file_is_refused(tmp_path):
    from soundry.models import load_model

    d = copy_folder(tmp_path)
    (d / "transformer" / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(str(d), device="cpu")


def test_custom_code_is_refused(tmp_path):
    from soundry.models import load_model

    d = copy_folder(tmp_path, "sa3")
    index = json.loads((d / "model_index.json").read_text())
    index["transformer"] = ["my_module", "MyDiT"]
    (d / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="transformer"):
        load_model(str(d), device="cpu")
    d2 = copy_folder(tmp_path / "b", "sa3")
    cfg = json.loads((d2 / "text_encoder" / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling.Model"}
    (d2 / "text_encoder" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="auto_map"):
        load_model(str(d2), device="cpu")


def test_too_long_a_duration_is_a_sentence():
    m = model("sao")
    with pytest.raises(ValueError, match="at most"):
        generate(m, ["dog"], duration=m.max_duration + 0.5, seed=0, steps=2)

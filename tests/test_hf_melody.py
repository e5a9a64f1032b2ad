"""Transformers-format MusicGen-melody checkpoints (``MusicgenMelodyForConditionalGeneration``, issue 23).

The fixtures tests/data/hf/musicgen-melody-hf-tiny and musicgen-stereo-melody-hf-tiny were written by
transformers' ``save_pretrained``, and
``melody_reference.pt`` holds transformers' own greedy ``generate`` (guidance 3.0) with a melody (the chroma of a
synthetic tune by transformers' ``MusicgenMelodyFeatureExtractor``) and without one
(tests/data/make_hf_melody_reference.py). soundry's tokens must equal transformers' exactly.
"""

from __future__ import annotations

from functools import cache

import pytest
import torch

from soundry.engine.generate import generate
from soundry.models.audiocraft.formats.transformers import TransformersMelodyConditioner, read_weights
from tests.helpers_models import DATA, TINY, assert_close_rel, melody_reference

HF = DATA / "hf"
MELODY = HF / "musicgen-melody-hf-tiny"
NAMES = ["musicgen-melody-hf-tiny", "musicgen-stereo-melody-hf-tiny"]


@cache
def reference() -> dict:
    return torch.load(HF / "melody_reference.pt", weights_only=True)


@cache
def model(name: str = NAMES[0]):
    """A fixture as soundry loads it, its stem separation replaced by the identity: the reference gave
    transformers' feature extractor the tune itself (transformers leaves demucs to its user; soundry separates
    the stems first, ``test_the_melody_is_separated_by_demucs_first``)."""
    from soundry.models import load_model

    m = load_model(str(HF / name), device="cpu")
    m.melody.stems = lambda wav, shift, sample_rate=None: wav
    m.melody.draw_shift = lambda generator: 0  # no demucs here, so no shift to draw
    return m


@pytest.mark.parametrize("kind", ["melody", "none"])
@pytest.mark.parametrize("case", ["batch", "single"])
@pytest.mark.parametrize("name", NAMES)
def test_tokens_equal_transformers_generate(name, case, kind):
    """Greedy, guidance 3.0, the tune as every prompt's melody or no melody; a batch of two prompts (the text
    padded to the longer, its padding attended to, as transformers' melody model does) and one prompt alone."""
    ref = reference()
    prompts = ref["prompts"] if case == "batch" else ref["prompts"][:1]
    melody = {"melody": ref["tune"][None], "melody_sample_rate": ref["sample_rate"], "demucs_shifts": [0]}
    out = generate(model(name), prompts, duration=ref["frames"] / ref["frame_rate"], top_k=1,
                   cfg_coef=ref["guidance_scale"], **(melody if kind == "melody" else {}))
    expected = ref[name][case][kind]
    assert out.tokens.shape == expected["tokens"].shape
    assert torch.equal(out.tokens, expected["tokens"]), f"{(out.tokens != expected['tokens']).sum()} tokens differ"
    head = expected["audio_head"]
    assert_close_rel(out.audio[..., : head.shape[-1]], head)


def test_the_engine_batches_them_each_request_conditioned_alone():
    """Through the engine, which conditions each request alone: a request with the tune and one without, the same
    prompt, and a third with another prompt (a prefix of another length) share a batch; the first two give
    transformers' tokens for the prompt alone."""
    from soundry.engine import Engine, GenerationRequest
    from soundry.engine.jobs import job_windows, prepare_melody

    ref, m = reference(), model()
    duration, tune = ref["frames"] / ref["frame_rate"], ref["tune"][None]
    requests = [GenerationRequest(ref["prompts"][0], duration, top_k=1, top_p=0.0, seed=1, melody=tune,
                                  melody_sample_rate=ref["sample_rate"]),
                GenerationRequest(ref["prompts"][0], duration, top_k=1, top_p=0.0, seed=2),
                GenerationRequest(ref["prompts"][1], duration, top_k=1, top_p=0.0, seed=3, melody=tune,
                                  melody_sample_rate=ref["sample_rate"])]
    for r in requests:  # the chroma first, so that the submits are instant and all three decode together
        prepare_melody(m, r, job_windows(m, r))
    engine = Engine(m, max_batch=4).start()
    try:
        tokens = [f.result(timeout=300).tokens for f in [engine.submit(r) for r in requests]]
        assert engine.stats.max_batch_size == len(requests)
    finally:
        engine.stop()
    assert torch.equal(tokens[0], ref[NAMES[0]]["single"]["melody"]["tokens"][0])
    assert torch.equal(tokens[1], ref[NAMES[0]]["single"]["none"]["tokens"][0])


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_precisions_apply_to_a_melody_model(precision):
    from soundry.models.audiocraft.formats.transformers import load_transformers_model

    ref = reference()
    m = load_transformers_model(MELODY, "m", "musicgen", torch.device("cpu"), precision, 64, True)
    m.melody.stems = model().melody.stems
    out = generate(m, ref["prompts"][:1], duration=ref["frames"] / ref["frame_rate"], top_k=1, melody=ref["tune"][None],
                   melody_sample_rate=ref["sample_rate"], demucs_shifts=[0])
    assert m.precision == precision and out.tokens.shape == ref[NAMES[0]]["single"]["melody"]["tokens"].shape


def test_the_melody_changes_the_tokens():
    ref = reference()
    for name in NAMES:
        assert not torch.equal(ref[name]["single"]["melody"]["tokens"], ref[name]["single"]["none"]["tokens"])


def test_chroma_is_the_feature_extractors():
    """The conditioner's chroma of the tune is transformers' feature extractor's, tiled to chroma_length; without
    a melody (and in the guidance row) the chroma is bin 0 in every frame, as transformers builds it."""
    ref, cond = reference(), model().melody
    chroma = cond.chroma(ref["tune"][None, None], shift=0)
    frames = ref["input_features"].shape[1]
    assert chroma.shape == (1, 235, 12) and cond.chroma_len == 235
    assert torch.equal(chroma[:, :frames], ref["input_features"])
    assert torch.equal(chroma[:, frames: 2 * frames], ref["input_features"])  # tiled, as transformers does
    null = cond.null_chroma(2)
    assert null.shape == (2, 235, 12) and torch.equal(null.argmax(-1), torch.zeros(2, 235, dtype=torch.long))
    assert torch.equal(null.sum(-1), torch.ones(2, 235))


def test_what_the_loader_reads_from_the_checkpoint():
    m, weights = model(), read_weights(MELODY)
    assert m.cfg.layout == "transformers" and m.cfg.prepend == ("self_wav", "description")
    assert not m.cfg.cross_attention and m.takes_melody and m.format == "transformers"
    assert isinstance(m.melody, TransformersMelodyConditioner)
    assert torch.equal(m.melody.output_proj.weight, weights["audio_enc_to_dec_proj.weight"])
    assert torch.equal(m.melody.output_proj.bias, weights["audio_enc_to_dec_proj.bias"])
    assert m.max_prefix == 235 + m.conditioner.max_tokens


def test_the_melody_is_separated_by_demucs_first():
    """A user's melody goes through demucs's vocals + other (as audiocraft's conditioner, and as transformers'
    documentation prepares a melody for its feature extractor) before the chroma: the stems of the audiocraft melody
    fixture's tune, with its tiny demucs and its shift, are audiocraft's."""
    g = melody_reference("musicgen-melody")
    cond = TransformersMelodyConditioner(32, chroma_length=235, demucs_dir=TINY["musicgen-melody"] / "demucs")
    stems = cond.stems(g["melody_model_rate"].mean(1, keepdim=True), shift=g["stems_shifts"])
    assert_close_rel(stems, g["stems_mix"])
    assert torch.equal(cond.extractor(stems), g["chroma"])


def test_a_lora_adapter_on_a_melody_model_is_merged(tmp_path):
    """peft's adapter on the melody model, the chroma projection among its targets: soundry's weights are peft's
    merged ones."""
    from peft import LoraConfig, get_peft_model
    from transformers import MusicgenMelodyForConditionalGeneration

    from soundry.models.audiocraft.formats.transformers import load_transformers_model

    base = MusicgenMelodyForConditionalGeneration.from_pretrained(MELODY).eval()
    torch.manual_seed(0)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                 target_modules=["audio_enc_to_dec_proj", "enc_to_dec_proj", "fc1"]))
    peft_model.save_pretrained(tmp_path / "lora")
    m = load_transformers_model(MELODY, "m", "musicgen", torch.device("cpu"), "fp32", 16, False,
                                adapter_dir=tmp_path / "lora")
    merged = peft_model.merge_and_unload()
    assert_close_rel(m.melody.output_proj.weight, merged.audio_enc_to_dec_proj.weight)
    assert_close_rel(m.conditioner.output_proj.weight, merged.enc_to_dec_proj.weight)
    assert_close_rel(m.lm.layers[0].linear1.weight, merged.decoder.model.decoder.layers[0].fc1.weight)
    assert not torch.equal(merged.audio_enc_to_dec_proj.weight, read_weights(MELODY)["audio_enc_to_dec_proj.weight"])


def test_models_add_takes_a_melody_checkpoint(tmp_path, capsys):
    from soundry.cli.main import main
    from soundry.models.catalog import Catalog

    args = ["--config", str(tmp_path / "none.toml"), "--data-dir", str(tmp_path / "data")]
    catalog = Catalog(tmp_path / "data")  # what a server on this data directory reads
    assert main(["models", "add", "mymelody", str(MELODY), *args]) == 0
    assert "added mymelody: transformers format" in capsys.readouterr().out
    # the APIs take a melody for it (configs.melody is checked against the catalog's entry)
    assert catalog.get("mymelody").melody
    release = DATA / "musicgen-stereo-melody-tiny"
    assert main(["models", "add", "mystereotune", str(release), *args]) == 0
    assert catalog.get("mystereotune").melody and catalog.get("mystereotune").channels == 2
    assert main(["models", "add", "plain", str(DATA / "musicgen-tiny"), *args]) == 0
    assert not catalog.get("plain").melody

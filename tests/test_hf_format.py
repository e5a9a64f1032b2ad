"""Transformers-format MusicGen checkpoints, LoRA adapters and where models come from (issue 23).

The fixtures in tests/data/hf were written by transformers' ``save_pretrained`` and peft, and
``reference.pt`` holds transformers' own greedy ``generate`` (guidance 3.0) for them
(tests/data/make_hf_reference.py). soundry's tokens must equal transformers' exactly.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from functools import cache

import pytest
import torch

from soundry.engine.generate import generate
from soundry.models.catalog import ModelSpec, register
from soundry.models.errors import CheckpointError, ModelNotAvailable
from tests.helpers_models import DATA, TINY, assert_close_rel, default_cpu_weights

HF = DATA / "hf"
MONO, STEREO, LORA = HF / "musicgen-hf-tiny", HF / "musicgen-stereo-hf-tiny", HF / "musicgen-hf-tiny-lora"


@cache
def reference() -> dict:
    return torch.load(HF / "reference.pt", weights_only=True)


@cache
def hf_model(name: str):
    from soundry.models import load_model

    if name == "musicgen-hf-tiny-lora":  # a base plus an adapter, as `soundry models add --adapter` records it
        register(ModelSpec("test-hf-lora", str(MONO), "musicgen", "test", source=str(MONO), adapter=str(LORA)))
        return load_model("test-hf-lora", device="cpu")
    return load_model(str(HF / name), device="cpu")


def _generate(model, prompts: list[str]):
    ref = reference()
    return generate(model, prompts, duration=ref["frames"] / ref["frame_rate"], top_k=1,
                    cfg_coef=ref["guidance_scale"])


@pytest.mark.parametrize("name", ["musicgen-hf-tiny", "musicgen-stereo-hf-tiny", "musicgen-hf-tiny-lora"])
@pytest.mark.parametrize("case", ["batch", "single"])
def test_tokens_equal_transformers_generate(name, case):
    """Greedy, guidance 3.0: a padded batch of two prompts (padding masked, as transformers does) and one
    prompt alone. The LoRA case compares soundry's merged weights with the PEFT model (adapter unmerged)."""
    ref = reference()
    prompts = ref["prompts"] if case == "batch" else ref["prompts"][:1]
    expected = ref[name][case]
    out = _generate(hf_model(name), prompts)
    assert out.tokens.shape == expected["tokens"].shape
    assert torch.equal(out.tokens, expected["tokens"]), f"{(out.tokens != expected['tokens']).sum()} tokens differ"
    head = expected["audio_head"]
    assert_close_rel(out.audio[..., : head.shape[-1]], head)


def test_what_the_loader_reads_from_the_checkpoint():
    m = hf_model("musicgen-stereo-hf-tiny")
    assert m.cfg.layout == "transformers" and m.cfg.card == 64 and m.cfg.special_token == 64
    assert m.cfg.delays == (0, 0, 1, 1, 2, 2, 3, 3) and m.channels == 2 and m.sample_rate == 32000
    assert m.format == "transformers" and m.weights == default_cpu_weights()
    assert hf_model("musicgen-hf-tiny-lora").adapter == LORA


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_precisions_apply_to_a_transformers_format_model(precision):
    from soundry.models import load_model

    m = load_model(str(MONO), device="cpu", precision=precision)
    audiocraft = load_model(str(TINY["musicgen"]), device="cpu", precision=precision)
    assert m.precision == precision and m.weights == audiocraft.weights  # the same layout as an audiocraft model
    out = _generate(m, reference()["prompts"][:1])
    assert out.tokens.shape == reference()["musicgen-hf-tiny"]["single"]["tokens"].shape


def test_the_transformers_semantics_are_what_makes_the_tokens_equal():
    """The branches named in hf_format's docstring matter: audiocraft's sinusoid and attended padding, or
    another delay-pattern token, give other tokens on the same weights."""
    m, ref = hf_model("musicgen-hf-tiny"), reference()
    expected = ref["musicgen-hf-tiny"]["batch"]["tokens"]
    cfg = m.cfg
    try:
        for change in ({"layout": "audiocraft"}, {"special_token": 0}):
            m.cfg = m.lm.cfg = dataclasses.replace(cfg, **change)
            assert not torch.equal(_generate(m, ref["prompts"]).tokens, expected), change
    finally:
        m.cfg = m.lm.cfg = cfg


def test_the_lora_adapter_changes_the_model():
    ref = reference()
    assert not torch.equal(ref["musicgen-hf-tiny"]["batch"]["tokens"], ref["musicgen-hf-tiny-lora"]["batch"]["tokens"])
    base, merged = hf_model("musicgen-hf-tiny"), hf_model("musicgen-hf-tiny-lora")
    assert not torch.equal(base.conditioner.output_proj.weight, merged.conditioner.output_proj.weight)


def _copy(src, dst, drop=()):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*drop))
    return dst


def test_refusals_name_the_cause(tmp_path):
    from soundry.models.audiocraft.formats.transformers import (
        load_transformers_model,
        merge_adapter,
        read_config,
        read_weights,
    )

    bin_only = _copy(MONO, tmp_path / "bin", drop=("model.safetensors",))
    torch.save({"x": torch.zeros(1)}, bin_only / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="safetensors only, because a .bin file is a pickle"):
        read_weights(bin_only)
    other = _copy(MONO, tmp_path / "other")
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "model_type": "musicgen_style"}))
    with pytest.raises(CheckpointError, match="names model_type 'musicgen_style'; soundry serves"):
        read_config(other)
    with pytest.raises(CheckpointError, match="musicgen_style"):
        load_transformers_model(other, "m", "musicgen", torch.device("cpu"), "fp32", 16, True)
    state, cfg = read_weights(MONO), read_config(MONO)[0]
    bin_adapter = _copy(LORA, tmp_path / "lora-bin", drop=("adapter_model.safetensors",))
    (bin_adapter / "adapter_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="adapter_model.bin: soundry reads adapters from safetensors only"):
        merge_adapter(state, cfg, bin_adapter)
    ia3 = _copy(LORA, tmp_path / "ia3")
    conf = json.loads((ia3 / "adapter_config.json").read_text())
    (ia3 / "adapter_config.json").write_text(json.dumps({**conf, "peft_type": "IA3"}))
    with pytest.raises(CheckpointError, match="IA3 adapter; soundry merges LoRA adapters only"):
        merge_adapter(state, cfg, ia3)


def test_same_model_in_two_formats_gives_the_same_tokens(tmp_path):
    """The tiny audiocraft reference written in transformers' layout (tests.helpers_hf_convert): soundry
    loads both to the same tokens, and transformers itself generates them from the converted folder."""
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    from soundry.models import load_model
    from tests.helpers_hf_convert import to_transformers

    out = to_transformers(TINY["musicgen"], tmp_path / "converted")
    prompt = ["an energetic techno beat"]
    audiocraft, converted = load_model(str(TINY["musicgen"]), device="cpu"), load_model(str(out), device="cpu")
    assert converted.cfg.layout == "transformers" and audiocraft.cfg.layout == "audiocraft"
    tokens = _generate(audiocraft, prompt).tokens
    assert torch.equal(_generate(converted, prompt).tokens, tokens)
    hf = MusicgenForConditionalGeneration.from_pretrained(out).eval()
    inputs = AutoTokenizer.from_pretrained(out)(prompt, return_tensors="pt")
    captured = []
    decode = hf.audio_encoder.decode
    hf.audio_encoder.decode = lambda codes, *a, **k: captured.append(codes) or decode(codes, *a, **k)
    with torch.no_grad():
        hf.generate(**inputs, do_sample=False, guidance_scale=3.0, max_new_tokens=tokens.shape[-1] + 3)
    assert torch.equal(captured[0][0], tokens)


# -- sources: folders and hub references ------------------------------------------------------------------
def _fake_hub_cache(root, repo: str, sha: str, folder, card: str | None = None):
    """huggingface_hub's cache layout: models--owner--name/{refs/main, snapshots/<sha>/...}."""
    base = root / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, base / "snapshots" / sha)
    if card is not None:
        (base / "snapshots" / sha / "README.md").write_text(card)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(sha)
    return base / "snapshots" / sha


def test_hub_reference_from_the_cache_offline(tmp_path, monkeypatch):
    from soundry.models.sources.added import UserModel, describe
    from soundry.models.sources.hub import fetch, parse_hub, pin

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # read at import: the env is too late
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    sha = "0123456789abcdef0123456789abcdef01234567"
    snap = _fake_hub_cache(tmp_path / "hub", "someone/tune", sha, MONO, "---\nlicense: cc-by-nc-4.0\n---\n# tune\n")
    assert parse_hub("hf:someone/tune@main").revision == "main" and parse_hub("hf:a/b").revision is None
    with pytest.raises(ValueError, match="not a hub reference"):
        parse_hub("hf:nobody")
    assert fetch("hf:someone/tune@main", download=False) == snap
    assert fetch(f"hf:someone/tune@{sha}", download=False) == snap
    assert pin(f"hf:someone/tune@{sha}") == f"hf:someone/tune@{sha}"
    info = describe(UserModel("tune", "hf:someone/tune@main"))
    assert info["here"] and info["format"] == "transformers" and info["revision"] == sha
    assert info["license"] == "cc-by-nc-4.0" and info["size_bytes"] > 100_000
    with pytest.raises(ModelNotAvailable, match="cannot reach the Hugging Face hub for hf:someone/other"):
        fetch("hf:someone/other@main", download=True)
    with pytest.raises(ModelNotAvailable, match="cannot reach the Hugging Face hub"):
        pin("hf:someone/tune@main")


def test_hub_download_fetches_only_the_files_of_its_format(tmp_path, monkeypatch):
    """The network calls (the listing and the download) are replaced; what soundry asks for is checked."""
    import huggingface_hub

    from soundry.models.sources import hub as sources

    asked = []
    listing = {"someone/tune": ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json",
                                "README.md", "state_dict.pt"],
               "someone/old": ["config.json", "pytorch_model.bin"],
               "facebook/musicgen-small": ["state_dict.bin", "compression_state_dict.bin", "config.json",
                                           "model.safetensors"]}

    def fake_download(repo, revision=None, allow_patterns=None, local_files_only=False, **_):
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        asked.append((repo, revision, allow_patterns))
        return str(MONO)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo, revision=None: listing[repo])
    assert sources.fetch("hf:someone/tune@v1") == MONO
    repo, revision, patterns = asked[-1]
    assert (repo, revision) == ("someone/tune", "v1")
    assert "model.safetensors" in patterns and not any(p.endswith(".bin") for p in patterns)
    sources.fetch("hf:facebook/musicgen-small")
    assert asked[-1][2][:2] == ["state_dict.bin", "compression_state_dict.bin"]  # the release files, not both
    with pytest.raises(ModelNotAvailable, match="only as pytorch_model.bin"):
        sources.fetch("hf:someone/old")
    assert len(asked) == 2

    # `soundry models add` pins a branch to the commit it names, and the model list reports that revision
    from soundry.models.sources.added import add, describe, read_records

    sha = "fedcba9876543210fedcba9876543210fedcba98"
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info",
                        lambda self, repo, revision=None: type("Info", (), {"sha": sha})())
    model = add(tmp_path / "data", "hubtune", "hf:someone/tune@main")
    assert model.source == f"hf:someone/tune@{sha}" and asked[-1][1] == sha
    assert read_records(tmp_path / "data")["hubtune"].source == model.source
    info = describe(model)
    assert info["revision"] == sha and not info["here"]  # the replaced download put nothing in the cache


# -- soundry models add / list, then every API ------------------------------------------------------------
def test_models_add_and_list(tmp_path, capsys):
    from soundry.cli.main import main

    data = tmp_path / "data"
    args = ["--config", str(tmp_path / "none.toml"), "--data-dir", str(data)]
    assert main(["models", "add", "mytune", str(MONO), *args]) == 0
    assert main(["models", "add", "mylora", str(MONO), "--adapter", str(LORA), *args]) == 0
    assert "added mytune: transformers format" in capsys.readouterr().out
    assert main(["models", "add", "musicgen", str(MONO), *args]) == 1
    assert "built-in model's name" in capsys.readouterr().err
    bin_only = _copy(MONO, tmp_path / "bin", drop=("model.safetensors",))
    (bin_only / "pytorch_model.bin").write_bytes(b"")
    assert main(["models", "add", "binary", str(bin_only), *args]) == 1
    assert "safetensors only" in capsys.readouterr().err
    assert main(["models", "add", "nothing", str(tmp_path / "nowhere"), *args]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["models", "add", "adapteronly", str(LORA), *args]) == 1
    assert "is a PEFT adapter: give its base model as SOURCE" in capsys.readouterr().err
    records = json.loads((data / "models.json").read_text())["models"]
    assert set(records) == {"mytune", "mylora"} and records["mylora"]["adapter"] == str(LORA)
    assert main(["models", "list", *args]) == 0
    out = capsys.readouterr().out
    assert f"mylora            {MONO} + LoRA adapter {LORA}" in out
    assert "format transformers" in out and "weights here" in out
    out_file = tmp_path / "tune.wav"  # a local generate finds the added model by its name too
    assert main(["generate", "a waltz", "-o", str(out_file), "--model", "mylora", "--duration", "0.2", *args]) == 0
    assert out_file.stat().st_size > 0
    assert main(["models", "remove", "mylora", *args]) == 0
    assert set(json.loads((data / "models.json").read_text())["models"]) == {"mytune"}


@pytest.mark.slow
def test_an_added_model_serves_every_api(tmp_path, tiny_models):
    """The README's newcomer steps: `soundry models add mytune FOLDER`, serve, then a FlexStack, an ElevenLabs
    and a Replicate request naming the model."""
    from fastapi.testclient import TestClient

    from soundry.api.app import create_app
    from soundry.cli.main import main
    from tests.conftest import make_settings, wait_for

    assert main(["models", "add", "mytune", str(STEREO), "--data-dir", str(tmp_path / "data"),
                 "--config", str(tmp_path / "none.toml")]) == 0
    app = create_app(make_settings(tmp_path))
    with TestClient(app) as client:
        accounts = app.state.services.accounts
        key = accounts.create_api_key(accounts.create_user("eve", "correct horse battery"), "t")
        bearer = {"Authorization": f"Bearer {key}"}
        listed = client.get("/v1/models/audio_generation", headers=bearer).json()["data"]
        meta = next(m["metadata"] for m in listed if m["model"] == "mytune")
        assert meta["channels"] == 2 and meta["source"] == str(STEREO) and meta["license"] is None
        body = {"prompt": "a waltz", "configs": {"model": "mytune", "duration": 0.3, "seed": 1}}
        task = client.post("/v1/ai/audio_generation", json=body, headers=bearer).json()["data"]
        assert wait_for(client, task["task_id"], bearer)["status"] == "COMPLETED"
        r = client.post("/v1/sound-generation?output_format=pcm_16000", headers={"xi-api-key": key},
                        json={"text": "a waltz", "duration_seconds": 0.5, "model_id": "mytune"})
        assert r.status_code == 200 and len(r.content) > 0
        r = client.post("/v1/models/soundry/mytune/predictions", headers={**bearer, "Prefer": "wait=30"},
                        json={"input": {"prompt": "a waltz", "duration": 0.3}})
        assert r.status_code in (200, 201) and r.json()["status"] == "succeeded", r.text

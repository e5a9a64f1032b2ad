"""The melody conditioner (soundry.models.audiocraft.conditioners.melody) reproduces audiocraft 1.3.0's
ChromaStemConditioner on the two
melody fixtures (tests/data/musicgen-*melody-tiny/melody.pt, made by make_melody.py).

A separation by the tiny random HTDemucs costs one 4 s segment (about 8 s on two CPU cores), so each fixture's
separations are computed once per module; the tests that need one are marked slow."""

import json
import random
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from soundry.models.audiocraft.checkpoint import load_package, parse_cfg
from soundry.models.audiocraft.conditioners import melody
from soundry.models.errors import CheckpointError
from tests.helpers_models import assert_close_rel

DATA = Path(__file__).parent / "data"
FIXTURES = ["musicgen-melody-tiny", "musicgen-stereo-melody-tiny"]


@cache
def fixture(name: str) -> dict:
    return torch.load(DATA / name / "melody.pt", weights_only=True)


@cache
def conditioner(name: str) -> melody.MelodyConditioner:
    path = DATA / name / "state_dict.bin"
    pkg = load_package(path)
    return melody.from_release(parse_cfg(pkg, path), pkg["best_state"], DATA / name)


@cache
def separations(name: str) -> dict:
    """Each fixture's separations, once: the stems given the fixture's draws (with the process-wide random state
    before and after), and the conditioning path as audiocraft runs it with CFG (melody rows and their null rows
    zero-padded to the melody's length, in one batch)."""
    g, cond = fixture(name), conditioner(name)
    _ = cond.demucs  # loaded first: building it draws its throwaway initial weights from torch's global generator
    state = random.getstate(), torch.get_rng_state()
    stems = cond.stems(g["melody_model_rate"], g["stems_shifts"][0])
    state_after = random.getstate(), torch.get_rng_state()
    wav = g["melody_model_rate"]
    cfg_batch = torch.cat([wav, torch.zeros_like(wav)])
    return {"stems": stems, "random_unchanged": state[0] == state_after[0] and torch.equal(state[1], state_after[1]),
            "cfg_chroma": cond.chroma(cfg_batch, g["teacher_shifts"][0])}


@pytest.mark.parametrize("name", FIXTURES)
def test_chroma_length_and_config(name):
    g, cond = fixture(name), conditioner(name)
    assert cond.chroma_len == g["chroma_len"] == 235
    assert cond.extractor.nfft == 2 ** 14 and cond.extractor.winhop == 2 ** 12 and cond.extractor.argmax
    assert cond.demucs_dir == DATA / name / "demucs"


@pytest.mark.parametrize("name", FIXTURES)
def test_melody_at_model_rate(name):
    g = fixture(name)
    out = melody.melody_to_model(g["melody_wav"], g["melody_sample_rate"], g["sample_rate"], g["channels"])
    assert out.shape == g["melody_model_rate"].shape
    assert_close_rel(out, g["melody_model_rate"])


@pytest.mark.parametrize("name", FIXTURES)
def test_chroma_extractor_soft_onehot_direct(name):
    g, cond = fixture(name), conditioner(name)
    soft = melody.ChromaExtractor(g["sample_rate"], radix2_exp=14, argmax=False)
    assert_close_rel(soft(g["stems_mix"]), g["chroma_soft"])
    assert torch.equal(cond.extractor(g["stems_mix"]), g["chroma"])
    direct = cond.extractor(g["melody_model_rate"].mean(1, keepdim=True))
    assert torch.equal(direct, g["chroma_direct"])
    assert len(set(g["chroma_direct"].argmax(-1).flatten().tolist())) > 1  # the bins really move here


@pytest.mark.parametrize("name", FIXTURES)
def test_null_chroma(name):
    g, cond = fixture(name), conditioner(name)
    assert torch.equal(cond.null_chroma(1), g["chroma_null"])
    assert torch.equal(cond.null_chroma(3), g["chroma_null"].expand(3, -1, -1))
    assert torch.equal(cond.chroma(torch.zeros(2, 1, 1), shift=0), g["chroma_null"].expand(2, -1, -1))  # no demucs
    assert (g["chroma_null"].argmax(-1) == 0).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", FIXTURES)
def test_stems_given_the_fixture_draws(name):
    g, sep = fixture(name), separations(name)
    assert sep["stems"].shape == g["stems_mix"].shape
    assert_close_rel(sep["stems"], g["stems_mix"])
    assert torch.equal(conditioner(name).extractor(sep["stems"]), g["chroma"])
    assert sep["random_unchanged"], "a separation touched the process-wide random (or torch's global) state"


@pytest.mark.slow
@pytest.mark.parametrize("name", FIXTURES)
def test_projected_condition_and_cfg_null_rows(name):
    g, cond, sep = fixture(name), conditioner(name), separations(name)
    batch = g["melody_model_rate"].shape[0]
    chroma = sep["cfg_chroma"]
    assert chroma.shape == (2 * batch, cond.chroma_len, 12)
    assert_close_rel(cond(chroma[:batch]), g["condition_self_wav"])
    # audiocraft's CFG null rows (zeros padded to the melody's length) go through demucs and come out silent:
    # their chroma is the null chroma.
    assert torch.equal(chroma[batch:], cond.null_chroma(batch))


@pytest.mark.slow
def test_same_shift_twice_gives_identical_stems():
    name = FIXTURES[0]
    g, cond = fixture(name), conditioner(name)
    assert torch.equal(cond.stems(g["melody_model_rate"], g["stems_shifts"][0]), separations(name)["stems"])


def test_draw_shift_range_and_reproducible():
    state = random.getstate()
    draws = [melody.draw_shift(torch.Generator().manual_seed(s)) for s in range(200)]
    assert random.getstate() == state
    assert all(0 <= d <= 22050 for d in draws) and len(set(draws)) > 150
    assert draws == [melody.draw_shift(torch.Generator().manual_seed(s)) for s in range(200)]
    assert melody.max_shift(44100) == 22050
    with pytest.raises(ValueError, match="time shift"):
        melody._apply_shifted(melody.shared_demucs(DATA / FIXTURES[0] / "demucs").models[0],
                              torch.zeros(1, 2, 100), 22051)


def _demucs_copy(tmp_path: Path, klass: str) -> Path:
    """The fixture's demucs folder with its safetensors metadata naming ``klass``."""
    src = DATA / FIXTURES[0] / "demucs"
    out = tmp_path / "demucs"
    out.mkdir()
    (out / "htdemucs.yaml").write_text((src / "htdemucs.yaml").read_text())
    with safe_open(str(src / "0000tiny.safetensors"), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(out / "0000tiny.safetensors"), metadata=dict(meta, klass=klass))
    return out


@pytest.mark.parametrize("klass", ["subprocess.Popen", "demucs.demucs.Demucs", "tests.not_a_module.Evil"])
def test_demucs_class_outside_allow_list_refused_before_building(tmp_path, monkeypatch, klass):
    import demucs.hf

    built = []
    monkeypatch.setattr(demucs.hf, "load_safetensors_model", lambda path: built.append(path))
    folder = _demucs_copy(tmp_path, klass)
    with pytest.raises(CheckpointError, match=f"name the class '{klass}'"):
        melody.load_demucs(folder)
    assert built == []


def test_demucs_bag_yaml_must_name_plain_signatures(tmp_path):
    folder = _demucs_copy(tmp_path, "demucs.htdemucs.HTDemucs")
    (folder / "htdemucs.yaml").write_text(json.dumps({"models": ["../../etc/passwd"]}))
    with pytest.raises(CheckpointError, match="names no models"):
        melody.load_demucs(folder)


def test_demucs_from_the_hub_through_demucs_names(monkeypatch):
    """Without a demucs/ folder the bag comes from adefossez/HTDemucs as demucs.hf.get_hf_model fetches it (the
    download is stood in for by the fixture's files: tests never reach the network)."""
    import huggingface_hub

    src = DATA / FIXTURES[0] / "demucs"
    asked = []

    def fake_download(repo_id, filename, **kw):
        asked.append((repo_id, filename))
        return str(src / ("htdemucs.yaml" if filename == "htdemucs.yaml" else "0000tiny.safetensors"))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    bag = melody.load_demucs(None)
    assert asked == [("adefossez/HTDemucs", "htdemucs.yaml"), ("adefossez/HTDemucs", "0000tiny.safetensors")]
    assert bag.sources == ["drums", "bass", "other", "vocals"] and bag.samplerate == 44100


def test_one_shift_per_model_in_the_bag():
    import numpy as np

    assert melody._shifts_per_model(5, 1) == [5] and melody._shifts_per_model(np.int64(7), 1) == [7]
    assert melody._shifts_per_model([1, 2, 3, 4], 4) == [1, 2, 3, 4]  # htdemucs_ft: a bag of four
    with pytest.raises(ValueError, match="4 time shifts"):
        melody._shifts_per_model(5, 4)


def test_demucs_hub_unreachable_is_one_sentence(monkeypatch):
    import huggingface_hub

    from soundry.models.errors import ModelNotAvailable

    def offline(repo_id, filename, **kw):
        raise ConnectionError("no network in tests")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(ModelNotAvailable, match="demucs/ folder beside the release"):
        melody.load_demucs(None)

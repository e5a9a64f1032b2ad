"""MultiBand Diffusion against audiocraft 1.3.0 (tests/data/musicgen-stereo-tiny/mbd, made by make_mbd.py; see
tests/data/REFERENCE.md / the reference README's "MultiBand Diffusion" section)."""

import os

import pytest
import torch

from soundry.models.audiocraft.codecs.mbd import load_mbd
from soundry.models.errors import CheckpointError
from soundry.models.loader import load_model

DATA = os.path.join(os.path.dirname(__file__), "data", "musicgen-stereo-tiny")
MBD_DIR = os.path.join(DATA, "mbd")
SHORT = [999, 499, 0]  # two U-Net passes a band: enough to see the seed and the halves


@pytest.fixture(scope="module")
def model():
    return load_model(DATA)


@pytest.fixture(scope="module")
def mbd(model):
    return load_mbd(MBD_DIR, model.codec)


@pytest.fixture(scope="module")
def ref():
    return torch.load(os.path.join(MBD_DIR, "mbd.pt"), weights_only=True)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_matches_audiocraft(mbd, ref):
    details = {}
    wav = mbd.tokens_to_wav(ref["tokens"], seed=ref["seed"], step_list=ref["step_list"], details=details)
    assert wav.shape == ref["wav"].shape and wav.dtype == torch.float32
    # the diagnosis first: the seeded draws, the EnCodec reference, each band (half-major), their sum
    assert torch.equal(details["initial_noises"], ref["initial_noises"])
    assert rel(details["wav_encodec"], ref["wav_encodec"]) < 1e-5
    for i, (ours, theirs) in enumerate(zip(details["band_outputs"], ref["band_outputs"], strict=True)):
        assert rel(ours, theirs) < 1e-4, f"half {i // 4} band {i % 4}"
    assert rel(details["wav_diffusion"], ref["wav_diffusion"]) < 1e-4
    assert rel(wav, ref["wav"]) < 1e-4


def test_default_steps_are_audiocraft_s(mbd, ref):
    from soundry.models.audiocraft.codecs.mbd import DEFAULT_STEPS

    assert DEFAULT_STEPS == ref["step_list"]


@pytest.fixture(scope="module")
def seeded(mbd, ref):
    """One short stereo decode with seed 7 (one row), and whether the global RNG state survived it."""
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    wav = mbd.tokens_to_wav(ref["tokens"][:1], seed=7, step_list=SHORT)
    return wav, torch.equal(torch.get_rng_state(), before)


def test_seed_reproduces_and_leaves_the_global_rng_alone(mbd, ref, seeded):
    a, rng_untouched = seeded
    assert rng_untouched
    torch.manual_seed(99)  # the global state does not enter either
    assert torch.equal(mbd.tokens_to_wav(ref["tokens"][:1], seed=7, step_list=SHORT), a)
    assert not torch.allclose(mbd.tokens_to_wav(ref["tokens"][:1], seed=8, step_list=SHORT), a)


def test_stereo_is_two_mono_halves(mbd, ref, seeded):
    """Left = the mono decode of codebooks 0, 2, ... with the seed's stream; right = codebooks 1, 3, ... with the
    stream continued after the left half's draws (audiocraft's order, so not the same noise as the left)."""
    tokens, (stereo, _) = ref["tokens"][:1], seeded
    left = mbd.tokens_to_wav(tokens[:, 0::2], seed=7, step_list=SHORT)
    assert stereo.shape[1] == 2 and left.shape[1] == 1
    assert torch.allclose(stereo[:, :1], left, rtol=0, atol=1e-6)
    assert not torch.allclose(stereo[:, 1:], mbd.tokens_to_wav(tokens[:, 1::2], seed=7, step_list=SHORT))
    with pytest.raises(ValueError, match="codebooks"):
        mbd.tokens_to_wav(tokens[:, :6], seed=0, step_list=SHORT)
    with pytest.raises(ValueError, match="strictly decreasing"):
        mbd.tokens_to_wav(tokens, seed=0, step_list=[0, 999])


def test_one_set_of_weights_serves_every_model(mbd, ref):
    """``with_codec`` binds the loaded networks to another model's codec without copying them, and decodes as a
    decoder loaded for that codec does."""
    mono_model = load_model(os.path.join(os.path.dirname(__file__), "data", "musicgen-tiny"))
    shared = mbd.with_codec(mono_model.codec)
    assert shared.bands is mbd.bands and shared.mono is mono_model.codec
    own = load_mbd(MBD_DIR, mono_model.codec)
    codes = ref["tokens"][:1, 0::2, :10]
    assert torch.equal(shared.tokens_to_wav(codes, seed=3, step_list=SHORT),
                       own.tokens_to_wav(codes, seed=3, step_list=SHORT))


class _Payload:
    """Unpickling this would call os.system; a safe loader must refuse before building it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refuses_a_file_with_other_globals(model, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "mbd_musicgen_32khz.th"
    torch.save({"sample_rate": 32000, "n_bands": 1, 0: {"cfg": _Payload(str(marker))}}, path)
    assert b"system" in path.read_bytes()  # the pickle does name os.system (posix.system)
    with pytest.raises(CheckpointError, match="not a MultiBand Diffusion release file"):
        load_mbd(tmp_path, model.codec)
    assert not marker.exists()

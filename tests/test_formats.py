"""Output formats decode back to the requested duration; loudness normalisation hits its target."""

from __future__ import annotations

import io

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

from soundry.audio import FORMATS, encode, normalize
from tests.conftest import wait_for

# lossy codecs pad to whole frames (MP3: 1152 samples); lossless ones are exact
TOLERANCE_S = {"wav": 0.0, "flac": 0.0, "ogg": 0.0, "opus": 0.0, "mp3": 0.08}


def _sine(freq: float, amplitude: float, seconds: float, sr: int) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)[None, :]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_decodes_to_the_duration(fmt):
    clip = _sine(440, 0.3, 1.5, 32000)
    enc = encode(clip, 32000, fmt)
    audio, sr = sf.read(io.BytesIO(enc.data))
    assert sr == enc.sample_rate
    assert abs(len(audio) / sr - 1.5) <= TOLERANCE_S[fmt] + 1e-9, (fmt, len(audio) / sr)


def test_the_meter_reads_the_bs1770_reference_level():
    # BS.1770: a full-scale 997 Hz sine in one channel reads -3.01 LKFS
    assert pyloudnorm.Meter(48000).integrated_loudness(_sine(997, 1.0, 5, 48000)[0].astype(np.float64)) == \
        pytest.approx(-3.01, abs=0.05)


@pytest.mark.parametrize("target", [-14.0, -23.0, -30.0])
def test_loudness_normalisation_hits_the_target(target):
    rng = np.random.default_rng(0)
    signal = _sine(500, 0.02, 4, 16000) + _sine(1500, 0.01, 4, 16000)
    signal = signal + 0.002 * rng.standard_normal(signal.shape).astype(np.float32)
    out = normalize(signal, 16000, "loudness", target_lufs=target)
    measured = pyloudnorm.Meter(16000).integrated_loudness(out[0].astype(np.float64))
    assert abs(measured - target) <= 0.5, measured
    assert np.max(np.abs(out)) <= 10 ** (-1 / 20) + 1e-6  # peak limit


def test_peak_and_rms_normalisation():
    signal = _sine(300, 0.1, 2, 16000)
    assert np.max(np.abs(normalize(signal, 16000, "peak"))) == pytest.approx(10 ** (-1 / 20), rel=1e-4)
    rms = np.sqrt(np.mean(normalize(signal, 16000, "rms", rms_db=-20.0) ** 2))
    assert 20 * np.log10(rms) == pytest.approx(-20.0, abs=0.01)
    assert np.array_equal(normalize(signal, 16000, "none"), signal)


@pytest.mark.parametrize("fmt", ["flac", "ogg", "mp3"])
def test_formats_through_the_api(client, user, fmt):
    body = {"prompt": "a bell", "configs": {"duration": 1.2, "output_format": fmt, "normalization": "peak"}}
    task_id = client.post("/v1/ai/audio_generation", json=body, headers=user["headers"]).json()["data"]["task_id"]
    result = wait_for(client, task_id, user["headers"])
    assert result["status"] == "COMPLETED" and result["output_format"] == fmt
    assert result["duration"] == pytest.approx(1.2) and result["sample_rate"] == 16000
    path = result["url_download"].split("://", 1)[1].split("/", 1)[1]
    resp = client.get("/" + path)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("audio/")
    audio, sr = sf.read(io.BytesIO(resp.content))
    assert abs(len(audio) / sr - 1.2) <= TOLERANCE_S[fmt] + 1e-9


@pytest.mark.parametrize("fmt,depth,subtype", [("wav", 16, "PCM_16"), ("wav", 24, "PCM_24"), ("flac", 24, "PCM_24"),
                                               ("wav", 32, "FLOAT")])
def test_bit_depth_sets_the_stored_samples(fmt, depth, subtype):
    clip = _sine(440, 0.3, 0.5, 32000)
    info = sf.info(io.BytesIO(encode(clip, 32000, fmt, depth).data))
    assert info.subtype == subtype
    audio, _ = sf.read(io.BytesIO(encode(clip, 32000, fmt, depth).data), dtype="float32", always_2d=True)
    assert np.abs(audio.T - clip).max() <= {16: 2 ** -15, 24: 2 ** -23, 32: 0.0}[depth]


def test_bit_depth_is_checked_against_the_format_when_a_task_is_created(client, user):
    for fmt, depth in (("mp3", 24), ("flac", 32), ("ogg", 32)):
        configs = {"model": "audiogen", "duration": 1, "output_format": fmt, "bit_depth": depth}
        r = client.post("/v1/ai/audio_generation", headers=user["headers"], json={"prompt": "rain", "configs": configs})
        assert r.status_code == 422 and r.json()["error_description"].startswith("configs.bit_depth"), r.text
    r = client.post("/v1/ai/audio_generation", headers=user["headers"], json={
        "prompt": "rain", "configs": {"model": "audiogen", "duration": 0.5, "output_format": "wav", "bit_depth": 24}})
    assert r.status_code == 201, r.text
    done = wait_for(client, r.json()["data"]["task_id"], user["headers"])
    assert sf.info(io.BytesIO(client.get(done["url_download"]).content)).subtype == "PCM_24"

"""POST /v1/sound-generation driven by the official ``elevenlabs`` SDK against a live server."""

from __future__ import annotations

import datetime as dt
import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile as sf
from elevenlabs import ElevenLabs
from elevenlabs.core.api_error import ApiError
from elevenlabs.errors import UnprocessableEntityError

from soundry.api.elevenlabs.routes import cfg_coef_for
from soundry.audio.loop import make_loop
from soundry.tasks.models import Task, utcnow


@pytest.fixture(scope="module")
def server(module_live_server):
    return module_live_server

def _sdk(server, key: str | None = None) -> ElevenLabs:
    return ElevenLabs(base_url=server.url, api_key=key or server.api_key)


def _decode(fmt: str, data: bytes) -> tuple[np.ndarray, int]:
    codec, rate = fmt.split("_")[0], int(fmt.split("_")[1])
    if codec == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768, rate
    if codec in ("ulaw", "alaw"):
        audio, sr = sf.read(io.BytesIO(data), format="RAW", subtype=codec.upper(), samplerate=rate, channels=1)
        return audio, sr
    audio, sr = sf.read(io.BytesIO(data))
    return audio, sr


# MP3 frames are 1152 samples (plus encoder delay): allow a little; everything else is exact
FORMATS = {"mp3_44100_128": 0.08, "mp3_22050_32": 0.12, "pcm_16000": 0, "pcm_44100": 0, "wav_22050": 0,
           "ulaw_8000": 0, "alaw_8000": 0, "opus_48000_64": 0}


def test_formats_decode_to_the_requested_duration_and_rate(server):
    client = _sdk(server)

    def one(fmt):
        return b"".join(client.text_to_sound_effects.convert(text="a door creaks open", duration_seconds=0.5,
                                                             output_format=fmt))

    with ThreadPoolExecutor(len(FORMATS)) as pool:  # one batch in the engine
        answers = dict(zip(FORMATS, pool.map(one, FORMATS), strict=True))
    for fmt, tolerance in FORMATS.items():
        audio, sr = _decode(fmt, answers[fmt])
        assert sr == int(fmt.split("_")[1]), fmt
        assert abs(len(audio) / sr - 0.5) <= tolerance + 1e-9, (fmt, len(audio) / sr)
        assert np.abs(audio).max() > 0, fmt  # not silence
    mp3 = answers["mp3_44100_128"]
    assert mp3[:3] == b"ID3" or mp3[0] == 0xFF  # an MP3 stream (the default format)
    assert 100 <= len(mp3) * 8 / 0.5 / 1000 <= 200  # about 128 kb/s (small clips carry header overhead)


def test_default_format_and_task_in_history(server):
    data = b"".join(_sdk(server).text_to_sound_effects.convert(text="thunder", duration_seconds=0.5))
    audio, sr = sf.read(io.BytesIO(data))
    assert sr == 44100 and abs(len(audio) / sr - 0.5) < 0.08  # mp3_44100_128 by default
    headers = {"Authorization": f"Bearer {server.api_key}"}
    task = httpx.get(server.url + "/v1/user/history", headers=headers).json()["data"]["tasks"][0]
    assert task["prompt"] == "thunder" and task["status"] == "COMPLETED"
    assert task["config"]["cfg_coef"] == pytest.approx(3.0)  # prompt_influence 0.3 by default


def test_bearer_auth_and_soundry_model_names(server):
    r = httpx.post(server.url + "/v1/sound-generation?output_format=pcm_16000",
                   json={"text": "piano chord", "model_id": "musicgen", "duration_seconds": 0.5, "prompt_influence": 1},
                   headers={"Authorization": f"Bearer {server.api_key}"}, timeout=120)
    assert r.status_code == 200 and r.headers["content-type"] == "audio/pcm"
    assert len(r.content) == 2 * 8000
    task = server.services.store.get(r.headers["x-soundry-task-id"])
    assert task.model == "musicgen" and task.config["cfg_coef"] == pytest.approx(cfg_coef_for(1.0))


def _seam_and_steps(audio: np.ndarray) -> tuple[float, np.ndarray]:
    return abs(float(audio[0] - audio[-1])), np.abs(np.diff(audio))


def test_loop_has_no_jump_at_the_seam(server):
    data = b"".join(_sdk(server).text_to_sound_effects.convert(
        text="engine idling", duration_seconds=1, loop=True, output_format="pcm_16000"))
    audio = np.frombuffer(data, "<i2").astype(np.float64)
    assert len(audio) == 16000
    seam, steps = _seam_and_steps(audio)
    assert seam <= np.percentile(steps, 99), (seam, np.percentile(steps, 99))


def test_make_loop_removes_the_jump():
    """A signal whose wrap-around jumps (a slow chirp): looped, its seam is an ordinary step."""
    sr, n, extra = 16000, 16000, 4000
    t = np.arange(n + extra) / sr
    signal = (0.5 * np.sin(2 * np.pi * (110 * t + 40 * t**2)) + 0.3 * t)[None].astype(np.float32)
    plain_seam, steps = _seam_and_steps(signal[0, :n])
    assert plain_seam > 5 * np.percentile(steps, 99)  # the plain clip clicks when repeated
    looped = make_loop(signal, n)[0]
    seam, steps = _seam_and_steps(looped)
    assert looped.shape == (n,) and seam <= np.percentile(steps, 99)


@pytest.mark.parametrize("kwargs, status, words", [
    ({"duration_seconds": 0.1}, 422, "duration_seconds"),
    ({"duration_seconds": 31}, 422, "duration_seconds"),
    ({"prompt_influence": 1.5}, 422, "prompt_influence"),
    ({"model_id": "nonsense"}, 422, "model_id"),
    ({"output_format": "mp3_1_1"}, 422, "output_format"),
    ({"text": "   "}, 422, "text"),
])
def test_bad_input_raises_the_sdk_error_with_the_reason(server, kwargs, status, words):
    args = {"text": "bell", "duration_seconds": 0.5, **kwargs}
    with pytest.raises(UnprocessableEntityError) as err:
        b"".join(_sdk(server).text_to_sound_effects.convert(**args))
    assert err.value.status_code == status
    assert words in err.value.body["detail"]["message"] and err.value.body["detail"]["status"] == "invalid_request"


def test_a_wrong_key_is_401(server):
    with pytest.raises(ApiError) as err:
        b"".join(_sdk(server, key="sk-wrong").text_to_sound_effects.convert(text="bell", duration_seconds=0.5))
    assert err.value.status_code == 401 and err.value.body["detail"]["status"] == "invalid_api_key"


def test_audio_streams_while_generated_and_leaving_cancels(server):
    """The first bytes come while the task is still PROCESSING; closing the connection cancels it.
    (No duration_seconds: the documented default, 5 s.)"""
    store = server.services.store
    with httpx.stream("POST", server.url + "/v1/sound-generation?output_format=pcm_16000",
                      json={"text": "rain"}, headers={"xi-api-key": server.api_key}, timeout=120) as r:
        assert r.status_code == 200
        task_id = r.headers["x-soundry-task-id"]
        assert store.get(task_id).config["duration"] == 5.0
        first = next(r.iter_raw())
        assert len(first) > 0
        assert store.get(task_id).status == "PROCESSING"
    import time

    deadline = time.time() + 30
    while store.get(task_id).status != "CANCELED":
        assert time.time() < deadline, store.get(task_id).status
        time.sleep(0.1)


def test_limits_apply_in_elevenlabs_shape(server):
    """A sound-generation request is a task like any other: the per-user audio budget applies."""
    store = server.services.store
    user = server.services.accounts.get_user(server.username)
    hog = store.create(Task(user_id=user.id, prompt="x", config={"duration": 3599}, model="audiogen",
                            status="PROCESSING", worker="elsewhere",  # held by a live worker elsewhere:
                            lease_until=utcnow() + dt.timedelta(hours=1)))  # it only fills the budget
    try:
        with pytest.raises(ApiError) as err:
            b"".join(_sdk(server).text_to_sound_effects.convert(text="bell", duration_seconds=2))
        assert err.value.status_code == 429 and err.value.headers["retry-after"]
        assert err.value.body["detail"]["status"] == "too_much_audio_queued"
        assert "3599" in err.value.body["detail"]["message"]
    finally:
        store.cancel(hog.id)


def test_leaving_before_any_audio_cancels(server):
    """A loop is sent when complete; a client that gives up while waiting cancels its task."""
    import time

    store = server.services.store
    before = {t.id for t in store.history(server.services.accounts.get_user(server.username).id, 200)[0]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/sound-generation?output_format=pcm_16000", timeout=httpx.Timeout(30, read=1.0),
                   json={"text": "fan humming", "duration_seconds": 20, "loop": True},
                   headers={"xi-api-key": server.api_key})
    user_id = server.services.accounts.get_user(server.username).id
    (task,) = [t for t in store.history(user_id, 200)[0] if t.id not in before]
    deadline = time.time() + 30
    while store.get(task.id).status != "CANCELED":
        assert time.time() < deadline, store.get(task.id).status
        time.sleep(0.1)

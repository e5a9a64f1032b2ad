"""Audio in: upload a clip, continue it (AudioGen, MusicGen, stereo MusicGen), the refusals, deletion
and retention."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from soundry.api.app import create_app
from tests.conftest import basic, make_settings, wait_for


def clip(seconds: float = 0.4, rate: int = 16000, channels: int = 1, fmt: str = "WAV") -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    audio = np.stack([0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)], axis=1)
    buf = io.BytesIO()
    sf.write(buf, audio.astype(np.float32), rate, format=fmt)
    return buf.getvalue()


def upload(client, headers, data: bytes, name: str = "loop.wav"):
    return client.post("/v1/uploads", headers=headers, files={"file": (name, data, "application/octet-stream")})


def generate(client, headers, **configs) -> dict:
    r = client.post("/v1/ai/audio_generation", headers=headers, json={"prompt": "dog barking", "configs": configs})
    assert r.status_code == 201, r.text
    return wait_for(client, r.json()["data"]["task_id"], headers)


def download(client, url: str) -> tuple[np.ndarray, int]:
    r = client.get(url.replace("http://testserver", ""))
    assert r.status_code == 200
    audio, rate = sf.read(io.BytesIO(r.content), always_2d=True)
    return audio, rate


def files_in(settings) -> list:
    return sorted(p for p in (settings.data_dir / "files").rglob("*") if p.is_file())


@pytest.mark.parametrize("model, rate, channels", [("audiogen", 16000, 1), ("musicgen", 32000, 1),
                                                   ("musicgen-stereo", 32000, 2)])
def test_upload_then_continue_gives_prompt_plus_continuation(client, user, model, rate, channels):
    h = user["headers"]
    r = upload(client, h, clip(0.4, 44100, channels=2), "take.wav")  # another rate and channel count
    assert r.status_code == 201, r.text
    up = r.json()["data"]
    assert (up["sample_rate"], up["channels"], up["filename"]) == (44100, 2, "take.wav")
    assert up["duration"] == pytest.approx(0.4, abs=1e-4)
    result = generate(client, h, model=model, duration=1.0, top_k=50, seed=1, input_audio=up["id"],
                      continuation_start=0.1)
    assert result["status"] == "COMPLETED", result
    audio, got_rate = download(client, result["url_download"])
    assert got_rate == rate and audio.shape == (rate, channels)  # total duration, prompt included
    assert np.abs(audio).max() > 0


def test_stereo_output_is_two_channels_in_every_format(client, user):
    for fmt in ("flac", "ogg", "mp3"):
        result = generate(client, user["headers"], model="musicgen-stereo", duration=0.5, output_format=fmt)
        audio, rate = download(client, result["url_download"])
        assert audio.shape[1] == 2 and rate == 32000, fmt


def test_refusals_store_nothing(client, user, settings):
    h = user["headers"]
    svc = client.app_services
    assert upload(client, h, b"RIFF....WAVEnot really audio").status_code == 422
    assert upload(client, h, b"\x00" * 1000, "x.mp3").json()["errors"] == ["invalid_audio"]
    r = client.post("/v1/uploads", headers=h, content=clip())
    assert r.status_code == 400 and "multipart" in r.json()["error_description"]
    r = client.post("/v1/uploads", headers=h, files={"other": ("a.wav", clip())})
    assert r.status_code == 400 and "'file'" in r.json()["error_description"]
    svc.settings.max_upload_seconds = 1.0
    r = upload(client, h, clip(1.5))
    assert r.status_code == 422 and "longer than 1 s" in r.json()["error_description"]
    r = upload(client, h, clip(channels=3))
    assert r.status_code == 422 and "channels" in r.json()["error_description"]
    svc.settings.max_upload_bytes = 10_000
    r = upload(client, h, clip(1.0))
    assert r.status_code == 413
    assert svc.uploads.count(1) == 0 and files_in(settings) == []
    assert client.post("/v1/uploads", files={"file": ("a.wav", clip())}).status_code == 401


def test_input_audio_is_checked_at_creation(client, user):
    h = user["headers"]
    svc = client.app_services
    svc.accounts.create_user("bob", "correct horse battery")
    bob = {"Authorization": "Bearer " + client.post("/v1/user/login", headers=basic("bob")).json()["data"]
           ["access_token"]}
    bobs = upload(client, bob, clip()).json()["data"]["id"]
    mine = upload(client, h, clip(0.4)).json()["data"]["id"]
    before = svc.store.count()

    def create(**configs):
        return client.post("/v1/ai/audio_generation", headers=h, json={"prompt": "x", "configs": configs})

    r = create(input_audio=bobs, duration=2)
    assert r.status_code == 404 and "input_audio" in r.json()["error_description"]
    assert client.get(f"/v1/uploads/{bobs}", headers=h).status_code == 404
    assert client.delete(f"/v1/uploads/{bobs}", headers=h).status_code == 404
    assert create(input_audio="zz", duration=2).status_code == 422
    r = create(input_audio=mine, duration=0.3)
    assert r.status_code == 422 and "configs.duration" in r.json()["error_description"]
    r = create(input_audio=mine, duration=2, continuation_end=0.9)
    assert r.status_code == 422 and "continuation_end" in r.json()["error_description"]
    r = create(input_audio=mine, duration=2, continuation_start=0.3, continuation_end=0.2)
    assert r.status_code == 422
    r = create(duration=2, continuation_start=0.1)
    assert r.status_code == 422 and "input_audio" in r.json()["error_description"]
    assert svc.store.count() == before


def test_delete_removes_the_file_and_later_tasks_are_refused(client, user, settings):
    h = user["headers"]
    up = upload(client, h, clip()).json()["data"]
    assert len(files_in(settings)) == 1
    assert client.get(f"/v1/uploads/{up['id']}", headers=h).json()["data"]["id"] == up["id"]
    r = client.delete(f"/v1/uploads/{up['id']}", headers=h)
    assert r.status_code == 200
    assert files_in(settings) == [] and client.get(f"/v1/uploads/{up['id']}", headers=h).status_code == 404
    r = client.post("/v1/ai/audio_generation", headers=h,
                    json={"prompt": "x", "configs": {"input_audio": up["id"], "duration": 2}})
    assert r.status_code == 404


def test_uploads_expire_after_the_retention_period(tmp_path, tiny_models):
    settings = make_settings(tmp_path, upload_retention_hours=1.0 / 3600, upload_purge_interval=0.2)
    app = create_app(settings)
    with TestClient(app) as client:
        svc = app.state.services
        svc.accounts.create_user("alice", "correct horse battery")
        token = client.post("/v1/user/login", headers=basic("alice")).json()["data"]["access_token"]
        h = {"Authorization": f"Bearer {token}"}
        up = upload(client, h, clip()).json()["data"]
        assert len(files_in(settings)) == 1
        deadline = time.time() + 30
        while (files_in(settings) or svc.uploads.count(1)) and time.time() < deadline:  # file first, then row
            time.sleep(0.1)
        assert files_in(settings) == []
        assert svc.uploads.count(1) == 0
        assert client.get(f"/v1/uploads/{up['id']}", headers=h).status_code == 404


def test_a_full_disk_while_receiving_an_upload_is_503_and_says_no_path(client, user, monkeypatch):
    """A server-side failure (no space left while the file is spooled or decoded) is the server's trouble: 503
    with Retry-After and a sentence, never a 400 that echoes the exception (issue 30 item 11)."""
    import starlette.formparsers

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device: '/var/lib/soundry/private/tmpx1'")

    for target in ("starlette.formparsers.MultiPartParser.parse", "soundry.tasks.uploads.decode_to_flac"):
        with monkeypatch.context() as mp:
            mp.setattr(target, full_disk)
            r = upload(client, user["headers"], clip())
        assert r.status_code == 503 and r.headers.get("retry-after"), (target, r.text)
        assert "private" not in r.text and r.json()["errors"] == ["storage_unavailable"]
    assert starlette.formparsers.MultiPartParser.parse is not full_disk
    bad = client.post("/v1/uploads", headers={**user["headers"], "Content-Type": "multipart/form-data; boundary=x"},
                      content=b"--x\r\nnot a part header\r\n\r\n--x--")
    assert bad.status_code == 400 and bad.json()["errors"] == ["bad_request"]  # a malformed body is still 400

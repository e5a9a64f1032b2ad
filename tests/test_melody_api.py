"""Melody through the FlexStack API (issue 20): an upload as ``configs.melody`` on a melody model, end to end,
and every refusal (a text-only model, together with input_audio, another user's upload, an undecodable file)
answered before anything is stored. One app (tiny models, SQLite) serves the whole module."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from soundry.api.app import create_app
from tests.conftest import PASSWORD, basic, make_settings, wait_for
from tests.helpers_models import TINY


def tune(seconds: float = 1.0, rate: int = 32000) -> bytes:
    """An arpeggio (A, C#, E, A) as WAV: a tune whose chroma changes over time."""
    notes = [440.0, 554.37, 659.25, 880.0]
    n = int(seconds * rate)
    f = np.repeat(notes, -(-n // len(notes)))[:n]
    audio = 0.4 * np.sin(2 * np.pi * np.cumsum(f) / rate)
    buf = io.BytesIO()
    sf.write(buf, audio.astype(np.float32), rate, format="WAV")
    return buf.getvalue()


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOUNDRY_MODEL_PATHS", ",".join(f"{k}={v}" for k, v in TINY.items()))
        app = create_app(make_settings(tmp_path_factory.mktemp("melody")))
        with TestClient(app) as c:
            svc = app.state.services
            c.svc = svc
            c.users = {}
            for name in ("alice", "bob"):
                svc.accounts.create_user(name, PASSWORD)
                token = c.post("/v1/user/login", headers=basic(name)).json()["data"]["access_token"]
                c.users[name] = {"Authorization": f"Bearer {token}"}
            yield c


def upload(api, who: str, data: bytes):
    return api.post("/v1/uploads", headers=api.users[who], files={"file": ("tune.wav", data, "audio/wav")})


def create(api, who: str = "alice", prompt: str = "a folk song", **configs):
    return api.post("/v1/ai/audio_generation", headers=api.users[who], json={"prompt": prompt, "configs": configs})


def run(api, **configs) -> dict:
    r = create(api, **configs)
    assert r.status_code == 201, r.text
    assert r.json()["data"]["config"]["melody"] == configs.get("melody")  # echoed
    return wait_for(api, r.json()["data"]["task_id"], api.users["alice"])


def audio_of(api, result: dict) -> np.ndarray:
    r = api.get(result["url_download"].replace("http://testserver", ""))
    assert r.status_code == 200
    return sf.read(io.BytesIO(r.content), always_2d=True)[0]


@pytest.mark.parametrize("model, channels", [("musicgen-melody", 1), ("musicgen-stereo-melody", 2)])
def test_a_melody_upload_conditions_the_task(api, model, channels):
    melody = upload(api, "alice", tune()).json()["data"]["id"]
    seeded = {"model": model, "duration": 0.5, "top_k": 50, "seed": 3, "normalization": "none"}
    followed = run(api, **seeded, melody=melody)
    assert followed["status"] == "COMPLETED", followed
    assert followed["decoder"] == "encodec" and followed["config"]["melody"] == melody
    plain = run(api, **seeded)
    assert plain["status"] == "COMPLETED", plain
    a, b = audio_of(api, followed), audio_of(api, plain)
    assert a.shape == b.shape == (16000, channels)
    assert not np.allclose(a, b, atol=1e-4)  # same seed, same text: the tune made the difference
    assert np.array_equal(audio_of(api, run(api, **seeded, melody=melody)), a)  # and a seeded melody task repeats


def test_refusals_name_the_field_and_store_nothing(api):
    svc = api.svc
    mine = upload(api, "alice", tune(0.5)).json()["data"]["id"]
    bobs = upload(api, "bob", tune(0.5)).json()["data"]["id"]
    r = upload(api, "alice", b"RIFF....WAVEnot audio at all")  # an undecodable tune is refused at upload
    assert r.status_code == 422 and r.json()["errors"] == ["invalid_audio"]
    before = svc.store.count()

    r = create(api, model="musicgen", duration=0.5, melody=mine)
    assert r.status_code == 422 and r.json()["error_description"].startswith("configs.melody: musicgen is not ")
    assert "musicgen-melody" in r.json()["error_description"]  # names the models that take one
    r = create(api, model="musicgen-melody", duration=2, melody=mine, input_audio=mine)
    assert r.status_code == 422 and r.json()["error_description"].startswith("configs.melody: ")
    assert "input_audio" in r.json()["error_description"]
    r = create(api, model="musicgen-melody", duration=0.5, melody=bobs)
    assert r.status_code == 404 and r.json()["error_description"].startswith("configs.melody: no upload")
    r = create(api, model="musicgen-melody", duration=0.5, melody="not-an-id")
    assert r.status_code == 422 and "configs.melody" in r.json()["error_description"]
    assert svc.store.count() == before


def test_the_model_list_says_which_models_take_a_melody(api):
    entries = {m["model"]: m["metadata"] for m in api.get("/v1/models/audio_generation").json()["data"]}
    assert entries["musicgen-melody"]["melody"] and entries["musicgen-stereo-melody-large"]["melody"]
    assert not entries["musicgen"]["melody"] and not entries["audiogen"]["melody"]


def test_a_melody_deleted_before_the_task_runs_fails_it_with_a_sentence(api):
    """The runner reads the upload when it starts the task: one gone by then fails the task, saying which."""
    from soundry.tasks.models import Task

    svc = api.svc
    melody = upload(api, "alice", tune(0.5)).json()["data"]["id"]
    user_id = svc.accounts.get_user("alice").id
    assert svc.uploads.delete(melody, user_id)
    task = svc.limits.create_task(Task(user_id=user_id, prompt="x", config={
        "model": "musicgen-melody", "duration": 0.5, "top_k": 50, "top_p": 0.0, "temperature": 1.0, "cfg_coef": 3.0,
        "melody": melody}, model="musicgen-melody"))
    svc.queue.enqueue(task.id, task.model)
    result = wait_for(api, task.id, api.users["alice"])
    assert result["status"] == "FAILED" and result["error_description"] == (
        f"melody {melody} no longer exists (deleted or expired)")


def test_a_task_canceled_while_its_melody_is_separated_is_not_decoded(api, monkeypatch):
    """The stems are computed before the engine knows the request: a cancel arriving then still stops it (the
    runner's sweep of its tasks hands it to the engine, which drops it instead of decoding it to the end)."""
    from soundry.models.audiocraft.conditioners.melody import MelodyConditioner

    melody = upload(api, "alice", tune(0.5)).json()["data"]["id"]
    separate, task = MelodyConditioner.chroma, {}

    def cancel_meanwhile(self, wav, shift):
        assert api.svc.store.cancel(task["id"])  # what POST .../cancel does: the record, then the queue
        api.svc.queue.cancel(task["id"])
        return separate(self, wav, shift)

    monkeypatch.setattr(MelodyConditioner, "chroma", cancel_meanwhile)
    engine = api.svc.queue.runner.engines.get("musicgen-melody")
    canceled, completed = engine.stats.canceled, engine.stats.completed
    r = create(api, model="musicgen-melody", duration=30.0, seed=8, melody=melody)
    assert r.status_code == 201, r.text
    task["id"] = r.json()["data"]["task_id"]
    assert wait_for(api, task["id"], api.users["alice"])["status"] == "CANCELED"
    deadline = time.monotonic() + 60
    while engine.stats.canceled == canceled and time.monotonic() < deadline:
        time.sleep(0.1)
    assert engine.stats.canceled == canceled + 1 and engine.stats.completed == completed

"""Stability's REST API (``POST /v2beta/audio/stable-audio-2/text-to-audio``) answered by soundry's Stable Audio
model, with the request shapes of Stability's published examples (``requests.post(url, headers={"authorization":
"Bearer sk-…", "accept": "audio/*"}, files={"none": ''}, data={...})``)."""

from __future__ import annotations

import base64
import io

import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from soundry.api.app import create_app
from tests.conftest import PASSWORD, make_settings
from tests.helpers_models import DATA, TINY

URL = "/v2beta/audio/stable-audio-2/text-to-audio"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOUNDRY_MODEL_PATHS", f"audiogen={TINY['audiogen']},"
                                         f"stable-audio-3-small-sfx={DATA / 'stable-audio-3-tiny'}")
        settings = make_settings(tmp_path_factory.mktemp("stability"), stability_model="stable-audio-3-small-sfx")
        with TestClient(create_app(settings)) as c:
            svc = c.app.state.services
            c.svc = svc
            c.key = svc.accounts.create_api_key(svc.accounts.create_user("ann", PASSWORD))
            yield c


def _post(c, data: dict, accept: str = "audio/*", key: str | None = None):
    headers = {"accept": accept}
    if key is not None or c.key:
        headers["authorization"] = f"Bearer {key or c.key}"
    return c.post(URL, headers=headers, files={"none": ("", b"")}, data=data)


def test_stabilitys_example_answers_the_audio_with_its_headers(server):
    r = _post(server, {"prompt": "The sound of waves hitting the beach at the seaside", "output_format": "wav",
                       "duration": "0.5", "steps": "4", "seed": "42"})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav", r.text
    assert r.headers["finish-reason"] == "SUCCESS" and r.headers["seed"] == "42"
    audio, rate = sf.read(io.BytesIO(r.content), always_2d=True)
    assert audio.shape[1] == 2 and abs(len(audio) / rate - 0.5) < 0.01
    again = _post(server, {"prompt": "The sound of waves hitting the beach at the seaside", "output_format": "wav",
                           "duration": "0.5", "steps": "4", "seed": "42"})
    assert again.content == r.content  # a seed reproduces
    task = server.svc.store.get(r.headers["x-soundry-task-id"])
    assert task.prompt.startswith("The sound of waves") and task.config["steps"] == 4  # an ordinary task


def test_json_accept_answers_base64_with_finish_reason_and_seed(server):
    r = _post(server, {"prompt": "a cat purring", "duration": "0.3", "output_format": "mp3", "model":
                       "stable-audio-2.5"}, accept="application/json")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["finish_reason"] == "SUCCESS" and isinstance(body["seed"], int) and body["seed"] > 0
    mp3 = base64.b64decode(body["audio"])
    assert mp3[:3] == b"ID3" or mp3[0] == 0xFF


@pytest.mark.parametrize("data,status,names", [
    ({"duration": "1"}, 422, "prompt"),
    ({"prompt": "x", "duration": "500"}, 422, "duration"),
    ({"prompt": "x", "cfg_scale": "99"}, 422, "cfg_scale"),
    ({"prompt": "x", "output_format": "flac"}, 422, "output_format"),
    ({"prompt": "x", "style": "jazz"}, 422, "style"),
    ({"prompt": "x", "model": "audiogen"}, 422, "model"),
])
def test_refusals_come_in_stabilitys_shape_and_store_nothing(server, data, status, names):
    before = server.svc.store.count()
    r = _post(server, data)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["name"] == "invalid_request" and len(body["id"]) == 32 and names in body["errors"][0]
    assert server.svc.store.count() == before


def test_a_wrong_key_is_401_before_the_form_is_read(server):
    r = server.post(URL, headers={"authorization": "Bearer sk-wrong", "accept": "audio/*",
                                  "content-type": "multipart/form-data; boundary=x"}, content=b"not a form")
    assert r.status_code == 401 and r.json()["name"] == "unauthorized"

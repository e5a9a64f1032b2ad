"""The same refusal answers the same status on every wire API (docs/refusals.md): FlexStack, ElevenLabs,
Replicate, Cog and Stability create tasks through one task service, authenticate before they read a body, and
each spells the refusal in its own shape. Nothing refused is stored."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from soundry.api.app import create_app
from soundry.service.tasks import TaskSpec
from tests.conftest import PASSWORD, make_settings

APIS = ["flexstack", "elevenlabs", "replicate", "cog", "stability"]
MAX_DURATION = 10


def _create(api: str, key: str | None, prompt: str = "rain on a tin roof", duration: float = 1.0,
            extra: dict | None = None, webhook: str | None = None, body: bytes | None = None) -> dict:
    """The create request of ``api`` (method, url, headers, content) for these inputs."""
    extra = extra or {}
    if api == "flexstack":
        url, auth = "/v1/ai/audio_generation", {"Authorization": f"Bearer {key}"}
        payload = {"prompt": prompt, "configs": {"model": "audiogen", "duration": duration, **extra}}
        if webhook:
            payload["webhook"] = webhook
    elif api == "elevenlabs":
        url, auth = "/v1/sound-generation", {"xi-api-key": key}
        payload = {"text": prompt, "duration_seconds": duration, **extra}
    elif api == "replicate":
        url, auth = "/v1/models/soundry/audiogen/predictions", {"Authorization": f"Bearer {key}"}
        payload = {"input": {"prompt": prompt, "duration": duration, **extra}}
        if webhook:
            payload["webhook"] = webhook
    elif api == "stability":  # Stability's form, as its examples send it (an empty file part "none")
        fields = {"prompt": prompt, "duration": str(duration), **{k: str(v) for k, v in extra.items()}}
        boundary = "soundry-test-boundary"
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                 for k, v in fields.items()]
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="none"; filename=""\r\n\r\n\r\n')
        form = ("".join(parts) + f"--{boundary}--\r\n").encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Accept": "audio/*",
                   **({"Authorization": f"Bearer {key}"} if key is not None else {})}
        return {"method": "POST", "url": "/v2beta/audio/stable-audio-2/text-to-audio", "headers": headers,
                "content": body if body is not None else form}
    else:  # Cog: the cog_model setting's inputs (meta/musicgen's for the default musicgen)
        url, auth = "/predictions", {"Authorization": f"Bearer {key}", "Prefer": "respond-async"}
        payload = {"input": {"prompt": prompt, "duration": duration, **extra}}
        if webhook:
            payload["webhook"] = webhook
    headers = {"Content-Type": "application/json", **(auth if key is not None else {})}
    if key is None:
        headers.pop("Prefer", None)
    return {"method": "POST", "url": url, "headers": headers,
            "content": body if body is not None else json.dumps(payload).encode()}


def _input_audio(api: str, upload_id: str) -> dict:
    if api == "flexstack":
        return {"input_audio": upload_id}
    if api == "cog":  # meta/musicgen: input_audio with continuation true is continued
        return {"input_audio": upload_id, "continuation": True}
    return {"input_audio": upload_id}


def _unknown_model(api: str) -> dict:
    return {"flexstack": {"model": "no-such-model"}, "elevenlabs": {"model_id": "no-such-model"},
            "replicate": {"model": "no-such-model"}, "cog": {"model_version": "no-such-model"},
            "stability": {"model": "no-such-model"}}[api]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One API (no worker: nothing is generated) for the module, two users, an upload of the second's."""
    from tests.helpers_models import TINY

    tmp = tmp_path_factory.mktemp("refusals")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOUNDRY_MODEL_PATHS", f"audiogen={TINY['audiogen']},musicgen={TINY['musicgen']}")
        settings = make_settings(tmp, max_duration=MAX_DURATION, max_prompt_chars=100, max_active_tasks_per_user=1,
                                 requests_per_minute=0, bearer_failures_per_address=0)
        with TestClient(create_app(settings, start_worker=False)) as c:
            svc = c.app.state.services
            c.svc = svc
            c.user = svc.accounts.create_user("ann", PASSWORD)
            c.key = svc.accounts.create_api_key(c.user)
            other = svc.accounts.create_user("bob", PASSWORD)
            wav = io.BytesIO()
            sf.write(wav, np.zeros(8000, dtype=np.float32), 16000, format="WAV")
            c.others_upload = svc.tasks.store_upload(other, "tune.wav", io.BytesIO(wav.getvalue()),
                                                     len(wav.getvalue())).id
            yield c


def _send(c, request: dict):
    before = c.svc.store.count()
    r = c.request(**request)
    assert c.svc.store.count() == before, f"a refused request stored a task: {r.text}"
    return r


def _said(r, api: str, code_or_field: str | tuple) -> bool:
    """Whether the answer, in its API's own shape, names ``code_or_field`` (or one of a tuple)."""
    if isinstance(code_or_field, tuple):
        return any(_said(r, api, one) for one in code_or_field)
    body = r.json()
    if api == "flexstack":
        return body["status"] == "error" and (code_or_field in body["errors"] or
                                              code_or_field in body["error_description"])
    if api == "elevenlabs":
        return code_or_field in body["detail"]["status"] or code_or_field in body["detail"]["message"]
    if api == "replicate":
        return body["status"] == r.status_code and code_or_field in json.dumps(body)
    if api == "stability":
        return len(body["id"]) == 32 and (code_or_field == body["name"] or code_or_field in json.dumps(body["errors"]))
    return code_or_field in json.dumps(body["detail"])


REFUSALS = {
    # name: (status, what the answer names, the request of an API)
    "no credential": (401, "API key", lambda api, c: _create(api, None)),
    "a wrong key": (401, "key", lambda api, c: _create(api, "sk-not-a-key")),
    "a wrong key with a malformed body": (401, "key", lambda api, c: _create(api, "sk-not-a-key", body=b"{")),
    "malformed JSON": (400, ("malformed JSON", "malformed multipart"),  # (Stability's is a form)
                       lambda api, c: _create(api, c.key, body=b'{"prompt": ')),
    "a body over 1 MiB": (413, ("request body over", "form is over"),
                          lambda api, c: _create(api, c.key, body=b" " * (2 << 20))),
    "a prompt over max_prompt_chars": (422, "characters", lambda api, c: _create(api, c.key, prompt="a" * 101)),
    "a blank prompt": (422, ("blank", "needs a prompt", "prompt:"), lambda api, c: _create(api, c.key, prompt="   ")),
    "a duration over max_duration": (422, "at most", lambda api, c: _create(api, c.key, duration=MAX_DURATION + 5)),
    "an unknown input": (422, "speed", lambda api, c: _create(api, c.key, extra={"speed": 2})),
    "an unknown model": (422, "model", lambda api, c: _create(api, c.key, extra=_unknown_model(api))),
}
NOT_ON_ELEVENLABS = {  # ElevenLabs' sound effects (and Stability's text to audio) take no audio in and no webhook
    "another user's upload": (404, "no upload", lambda api, c: _create(
        api, c.key, duration=5, extra=_input_audio(api, c.others_upload))),
    "a webhook to a private address": (422, "webhook", lambda api, c: _create(
        api, c.key, webhook="http://127.0.0.1:9/hook")),
}
CASES = [(api, name, *spec) for api in APIS for name, spec in REFUSALS.items()] + [
    (api, name, *spec) for api in ("flexstack", "replicate", "cog") for name, spec in NOT_ON_ELEVENLABS.items()]


@pytest.mark.parametrize("api,name,status,named,make", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_the_same_refusal_answers_the_same_status_on_every_api(server, api, name, status, named, make):
    r = _send(server, make(api, server))
    assert r.status_code == status, (api, name, r.status_code, r.text)
    assert _said(r, api, named), (api, name, r.text)


@pytest.mark.parametrize("api", APIS)
def test_a_user_at_the_unfinished_task_cap_is_refused_429_on_every_api(server, api):
    c = server
    task = c.svc.tasks.create(c.user, TaskSpec("already waiting", configs={"model": "audiogen", "duration": 1}))
    try:
        r = _send(c, _create(api, c.key))
        assert r.status_code == 429 and _said(r, api, "unfinished"), (api, r.text)
        assert r.headers.get("retry-after")
    finally:
        c.svc.tasks.cancel_task(task.id)


def test_the_refusal_table_lists_every_refusal_tested_here():
    from pathlib import Path

    table = (Path(__file__).resolve().parent.parent / "docs" / "refusals.md").read_text()
    for name in [*REFUSALS, *NOT_ON_ELEVENLABS, "the unfinished-task cap"]:
        assert f"| {name} |" in table, name


def test_a_cog_model_setting_that_names_no_model_is_said_not_a_500(tmp_path, tiny_models):
    """Issue 30 item 9: ``cog_model`` naming no model answered 500 (a KeyError) on every Cog call."""
    with TestClient(create_app(make_settings(tmp_path, cog_model="no-such-model"), start_worker=False)) as c:
        svc = c.app.state.services
        key = svc.accounts.create_api_key(svc.accounts.create_user("ann", PASSWORD))
        r = c.post("/predictions", headers={"Authorization": f"Bearer {key}"}, json={"input": {"prompt": "x"}})
        assert r.status_code == 503 and "cog_model" in r.json()["detail"], r.text
        health = c.get("/health-check").json()
        assert health["status"] == "SETUP_FAILED" and "no-such-model" in health["setup"]["logs"]


def test_cog_health_says_starting_while_the_model_loads(tmp_path, tiny_models):
    """Cog's schema has STARTING: it is said while the cog_model's load runs (READY said it before)."""
    import threading

    from soundry.tasks.engines import ModelUnavailable

    with TestClient(create_app(make_settings(tmp_path), start_worker=False)) as c:
        engines = c.app.state.services.engines
        entered, release = threading.Event(), threading.Event()

        def slow_load(name):
            entered.set()
            release.wait(60)
            raise RuntimeError("the test's load fails after the check")

        engines._loader = slow_load
        loading = threading.Thread(target=lambda: pytest.raises(ModelUnavailable, engines.get, "musicgen"),
                                   daemon=True)
        loading.start()
        assert entered.wait(30)
        try:
            assert c.get("/health-check").json()["status"] == "STARTING"
        finally:
            release.set()
            loading.join(30)
        health = c.get("/health-check").json()
        assert health["status"] == "SETUP_FAILED" and "the test's load fails" in health["setup"]["logs"]

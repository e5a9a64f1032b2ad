"""The same rules on every route (issue 19): refused credentials count however they are sent, body
types are strict, text fields refuse every control character, odd tokens and missing files are
answered (not 500), and the links soundry signs name this server, never a spoofed Host."""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from soundry.api.app import create_app
from soundry.api.http.envelope import ApiError
from soundry.signing import derive_key
from soundry.tasks import webhook_target
from soundry.tasks.models import Task
from soundry.tasks.webhooks import WebhookSender
from tests.conftest import PASSWORD, make_settings

GOOD = {"prompt": "dog barking", "configs": {"model": "audiogen", "duration": 1}}
# every number of the create body's configs, and of the ElevenLabs body (their booleans were strict already)
CONFIG_NUMBERS = ["duration", "top_p", "temperature", "cfg_coef", "target_lufs", "continuation_start",
                  "continuation_end"]
ELEVENLABS_NUMBERS = ["duration_seconds", "prompt_influence"]
NOT_NUMBERS = ["5", True, False]
CONTROLS = ["\x7f", "\x80", "\x85", "\x9f"]  # DEL and C1, refused as C0 is


@pytest.fixture
def app_client(tmp_path, tiny_models, database_url):
    """The API without a worker (nothing is generated), on SQLite and PostgreSQL, and a user's API key."""
    with TestClient(create_app(make_settings(tmp_path, database_url=database_url), start_worker=False)) as c:
        svc = c.app.state.services
        c.svc = svc
        c.user = svc.accounts.create_user("ann", PASSWORD)
        c.key = svc.accounts.create_api_key(c.user)
        c.headers = {"Authorization": f"Bearer {c.key}"}
        yield c


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


def _refuse_enqueue(c):
    """The queue refuses (503): a body that passed validation is answered at once, without a worker."""
    def enqueue(task_id, model):
        raise ApiError(503, "unavailable", "the test's queue refuses")
    c.svc.queue.enqueue = enqueue


class _Recorder:
    """Stands in for a service object and records, for each method called, whether it ran on the event loop."""

    def __init__(self, name: str, target, calls: list):
        self._name, self._target, self._calls = name, target, calls

    def __getattr__(self, attr):
        value = getattr(self._target, attr)
        if not callable(value):
            return value

        def call(*args, **kwargs):
            self._calls.append((f"{self._name}.{attr}", _on_event_loop()))
            return value(*args, **kwargs)
        return call


# -- refused credentials count on every route ----------------------------------------------------------
def test_xi_api_key_refusals_are_throttled(tmp_path, tiny_models):
    with TestClient(create_app(make_settings(tmp_path, bearer_failures_per_address=3), start_worker=False)) as c:
        svc = c.app.state.services
        key = svc.accounts.create_api_key(svc.accounts.create_user("eve", PASSWORD))
        body = {"text": "rain on a roof", "duration_seconds": 1}
        for bad in ("sk-0000.nope", "not-a-key", key + "x"):
            r = c.post("/v1/sound-generation", json=body, headers={"xi-api-key": bad})
            assert r.status_code == 401 and r.json()["detail"]["status"] == "invalid_api_key", r.text
        r = c.post("/v1/sound-generation", json=body, headers={"xi-api-key": "sk-0000.nope"})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0, r.text
        assert r.json()["detail"]["status"] == "rate_limited"
        # one budget per address, whichever header the guesses came in: the bearer routes refuse too,
        # and nothing is verified from the address (not even a good key) until the window passes
        assert c.get("/v1/user/me", headers={"Authorization": f"Bearer {key}"}).status_code == 429
        assert c.post("/v1/sound-generation", json=body, headers={"xi-api-key": key}).status_code == 429


def test_refused_refresh_tokens_are_throttled(tmp_path, tiny_models):
    with TestClient(create_app(make_settings(tmp_path, bearer_failures_per_address=3), start_worker=False)) as c:
        svc = c.app.state.services
        refresh = svc.accounts.issue_tokens(svc.accounts.create_user("eve", PASSWORD))["refresh_token"]
        for bad in ("not-a-jwt", refresh + "x", refresh[:-4]):
            assert c.post("/v1/user/refresh_token", data={"refresh_token": bad}).status_code == 401
        r = c.post("/v1/user/refresh_token", data={"refresh_token": refresh})  # even a good one, from this address
        assert r.status_code == 429 and r.json()["errors"] == ["rate_limited"], r.text


def test_elevenlabs_create_runs_off_the_event_loop(app_client):
    c, calls = app_client, []
    _refuse_enqueue(c)
    for name in ("store", "limits", "queue", "accounts"):
        setattr(c.svc, name, _Recorder(name, getattr(c.svc, name), calls))
    r = c.post("/v1/sound-generation", json={"text": "rain", "duration_seconds": 1}, headers={"xi-api-key": c.key})
    assert r.status_code == 503, r.text
    names = {name for name, _ in calls}
    creates = {"store.create", "store.create_within_limits", "limits.create_task", "limits.check_new_task"}
    assert "queue.enqueue" in names and names & creates, names
    # the database and the queue ran on the thread pool; only in-memory rate-limit counts (no I/O) run on the event
    # loop, where authentication needs no thread (issue 30 item 7)
    in_memory = {"limits.check_bearer", "limits.bearer_failed", "limits.check_request"} if c.svc.limits.in_memory \
        else set()
    assert [name for name, on_loop in calls if on_loop and name not in in_memory] == []


# -- strict types ------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", CONFIG_NUMBERS)
@pytest.mark.parametrize("value", NOT_NUMBERS, ids=repr)
def test_create_refuses_strings_and_booleans_as_numbers(app_client, field, value):
    c = app_client
    _refuse_enqueue(c)
    before = c.svc.store.count()
    r = c.post("/v1/ai/audio_generation", headers=c.headers,
               json={**GOOD, "configs": {**GOOD["configs"], field: value}})
    described = r.json()["error_description"]
    assert r.status_code == 422 and f"configs.{field}: Input should be a valid number" in described, r.text
    assert c.svc.store.count() == before


@pytest.mark.parametrize("field", ELEVENLABS_NUMBERS)
@pytest.mark.parametrize("value", NOT_NUMBERS, ids=repr)
def test_elevenlabs_refuses_strings_and_booleans_as_numbers(app_client, field, value):
    c = app_client
    _refuse_enqueue(c)
    r = c.post("/v1/sound-generation", json={"text": "rain", field: value}, headers={"xi-api-key": c.key})
    assert r.status_code == 422 and f"{field}: Input should be a valid number" in r.json()["detail"]["message"], r.text
    assert c.svc.store.count() == 0


# -- control characters ------------------------------------------------------------------------------
@pytest.mark.parametrize("char", CONTROLS, ids=lambda ch: f"U+{ord(ch):04X}")
def test_text_fields_refuse_del_and_c1_controls(app_client, char):
    c = app_client
    _refuse_enqueue(c)
    for field in ("prompt", "negative_prompt"):
        r = c.post("/v1/ai/audio_generation", headers=c.headers, json={**GOOD, field: f"dog{char}bark"})
        assert r.status_code == 422 and field in r.json()["error_description"], r.text
    r = c.post("/v1/sound-generation", json={"text": f"rain{char}"}, headers={"xi-api-key": c.key})
    assert r.status_code == 422 and "text" in r.json()["detail"]["message"], r.text
    assert c.svc.store.count() == 0
    task = c.svc.store.create(Task(user_id=c.user.id, prompt="p", config={}, model="audiogen", status="CANCELED"))
    r = c.post("/v1/ai/feedback", headers=c.headers, json={"task_id": task.id, "rating": 3, "feedback": f"ok{char}"})
    assert r.status_code == 422 and "feedback" in r.json()["error_description"], r.text


def test_an_upload_whose_name_has_control_characters_is_refused(app_client):
    c = app_client
    buf = io.BytesIO()
    sf.write(buf, np.zeros(16000, dtype=np.float32), 16000, format="WAV")
    for char in CONTROLS:  # (httpx percent-encodes C0 in a multipart file name: DEL and C1 arrive as they are)
        r = c.post("/v1/uploads", headers=c.headers, files={"file": (f"clip{char}.wav", buf.getvalue(), "audio/wav")})
        assert r.status_code == 422 and "file name" in r.json()["error_description"], r.text
    r = c.post("/v1/uploads", headers=c.headers, files={"file": ("clip é.wav", buf.getvalue(), "audio/wav")})
    assert r.status_code == 201 and r.json()["data"]["filename"] == "clip é.wav", r.text


def test_the_documented_text_patterns_match_the_validation(tmp_path, tiny_models):
    """The OpenAPI document's patterns refuse what the validators refuse, character by character."""
    from pydantic import ValidationError

    from soundry.api.elevenlabs.routes import SoundGeneration
    from soundry.api.flexstack.schemas import CreateTask, Feedback

    doc = create_app(make_settings(tmp_path), start_worker=False).openapi()

    def body(path: str) -> dict:
        schema = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        if "$ref" in schema:
            schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        return schema["properties"]

    create = body("/v1/ai/audio_generation")
    fields = [(CreateTask, "prompt", create["prompt"]), (CreateTask, "negative_prompt", create["negative_prompt"]),
              (Feedback, "feedback", body("/v1/ai/feedback")["feedback"]),
              (SoundGeneration, "text", body("/v1/sound-generation")["text"])]
    required = {CreateTask: {"prompt": "x"}, Feedback: {"task_id": "t", "rating": 3}, SoundGeneration: {"text": "x"}}
    for model, name, prop in fields:
        pattern = re.compile(prop["pattern"])
        for code in range(0xA1):
            value = f"a{chr(code)}b"
            try:
                model.model_validate({**required[model], name: value})
                refused = False
            except ValidationError:
                refused = True
            assert refused == (pattern.search(value) is None), (name, f"U+{code:04X}")


# -- odd tokens --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sub", ["abc", "1.5", " 1", "\u0661", "99999999999999999999", "3000000000"], ids=repr)
def test_a_token_with_an_odd_subject_is_401(app_client, sub):
    c = app_client
    key, now = derive_key(c.svc.settings.secret, "jwt"), int(time.time())
    for typ in ("access", "refresh"):
        token = jwt.encode({"sub": sub, "typ": typ, "iat": now, "exp": now + 600, "jti": "j" * 32}, key,
                           algorithm="HS256")
        if typ == "access":
            r = c.get("/v1/user/me", headers={"Authorization": f"Bearer {token}"})
        else:
            r = c.post("/v1/user/refresh_token", data={"refresh_token": token})
        assert r.status_code == 401 and r.json()["errors"] == ["unauthorized"], (typ, r.text)


# -- stored files that are gone ----------------------------------------------------------------------
def _completed_task(c) -> Task:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(1600, dtype=np.float32), 16000, format="WAV")
    key = "tests/gone.wav"
    c.svc.storage.put(key, buf.getvalue(), "audio/wav")
    return c.svc.store.create(Task(user_id=c.user.id, prompt="p", config={"duration": 0.1}, model="audiogen",
                                   status="COMPLETED", file_key=key, file_format="wav", sample_rate=16000,
                                   audio_seconds=0.1))


def test_a_deleted_file_is_410_on_download_and_stream(app_client, caplog):
    c = app_client
    task = _completed_task(c)
    url = c.get(f"/v1/ai/audio_generation/{task.id}", headers=c.headers).json()["data"]["data"]["url_download"]
    path = url.split("://", 1)[1].split("/", 1)[1]
    assert c.get(f"/{path}").status_code == 200
    c.svc.storage.delete(task.file_key)
    for r in (c.get(f"/{path}"), c.get(f"/v1/ai/audio_generation/{task.id}/stream", headers=c.headers)):
        assert r.status_code == 410 and r.json()["errors"] == ["gone"], r.text
        assert "no longer stored" in r.json()["error_description"]
        assert str(c.svc.settings.data_dir) not in r.text
    assert str(c.svc.settings.data_dir) not in caplog.text  # nothing went wrong on the server's side


# -- links -------------------------------------------------------------------------------------------
def test_a_spoofed_host_gets_no_link_to_itself(tmp_path, tiny_models):
    """With public_url unset, links name the address the connection reached, or a Host header the
    operator trusts (allowed_hosts); never a Host header nobody checked."""
    settings = make_settings(tmp_path, allowed_hosts=["api.example.org", "*.soundry.example"])
    with TestClient(create_app(settings, start_worker=False)) as c:
        c.svc, c.user = c.app.state.services, c.app.state.services.accounts.create_user("ann", PASSWORD)
        headers = {"Authorization": f"Bearer {c.svc.accounts.create_api_key(c.user)}"}
        task = _completed_task(c)

        def links(host: str) -> list[str]:
            data = c.get(f"/v1/ai/audio_generation/{task.id}", headers={**headers, "Host": host}).json()["data"]
            pending = c.svc.store.create(Task(user_id=c.user.id, prompt="p", config={}, model="audiogen"))
            stream = c.get(f"/v1/ai/audio_generation/{pending.id}", headers={**headers, "Host": host}).json()
            return [data["data"]["url_download"], stream["data"]["data"]["url_stream"]]

        for spoofed in ("evil.example", "evil.example:8000", "api.example.org@evil.example", "api.example.org.evil"):
            for link in links(spoofed):
                assert "evil" not in link and link.startswith("http://testserver/v1/"), (spoofed, link)
        for trusted in ("api.example.org", "API.example.org:8443", "eu.soundry.example"):
            for link in links(trusted):
                assert link.lower().startswith(f"http://{trusted.lower()}/v1/"), (trusted, link)
        c.svc.settings.public_url = "https://audio.example.net"
        for link in links("evil.example"):
            assert link.startswith("https://audio.example.net/v1/"), link


class _BodyReceiver:
    """A local HTTP listener (127.0.0.1) that keeps the bodies POSTed to it."""

    def __init__(self):
        self.bodies: list[bytes] = []
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                rec.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_webhooks_link_names_the_address_serve_listens_on(tmp_path, tiny_models, monkeypatch):
    import uvicorn

    from soundry.cli.main import serve

    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)  # serve up to the point it would listen
    settings = make_settings(tmp_path, webhook_allow_cidrs=["127.0.0.0/8"])
    assert serve(settings, "127.0.0.1", 9123) == 0
    receiver = _BodyReceiver()
    try:
        app = create_app(settings, start_worker=False)
        svc = app.state.services
        user = svc.accounts.create_user("ann", PASSWORD)
        task = svc.store.create(Task(user_id=user.id, prompt="p", config={}, model="audiogen", status="COMPLETED",
                                     file_key="x/y.wav", file_format="wav", webhook=receiver.url))
        ok, why = asyncio.run(WebhookSender(svc.store, settings).deliver(svc.store.get(task.id)))
        assert ok, why
        link = json.loads(receiver.bodies[0])["data"]["url_download"]
        assert link.startswith("http://127.0.0.1:9123/v1/files/"), link
    finally:
        receiver.close()


# -- the contract ------------------------------------------------------------------------------------
WEBHOOKS = ["https://hooks.example.org/soundry?t=1", "HTTP://203.0.113.7:8080/x", "http://user:pw@h.example/",
            "", "ftp://h.example/", "http://", "http://a b/", "http://@/", "http://:80/", "https://h.example/\n",
            "hooks.example.org/x", "javascript:alert(1)"]


def test_the_create_schema_says_what_validation_accepts(tmp_path, tiny_models):
    """The create body's schema states the rules the validator applies: the webhook's syntax, the model
    names, continuation_start/end only with input_audio, integers that may be written 5.0."""
    from pydantic import ValidationError

    from soundry.api.flexstack.schemas import CreateTask

    app = create_app(make_settings(tmp_path), start_worker=False)
    schemas = app.openapi()["components"]["schemas"]
    pattern = re.compile(schemas["CreateTask"]["properties"]["webhook"]["pattern"])  # strings only; null is fine
    for url in WEBHOOKS:
        try:
            CreateTask.model_validate({"prompt": "x", "webhook": url})
            accepted = True
        except ValidationError:
            accepted = False
        assert accepted == (pattern.fullmatch(url) is not None), url  # (ECMA's $: the very end)
    configs = schemas["Configs"]
    assert configs["properties"]["model"]["enum"] == app.state.services.catalog.names()
    assert configs["dependentRequired"] == {"continuation_start": ["input_audio"], "continuation_end": ["input_audio"]}
    for name in ("top_k", "seed"):
        assert getattr(CreateTask.model_validate({"prompt": "x", "configs": {name: 5.0}}).configs, name) == 5


def test_continuation_without_input_audio_is_refused_even_at_zero(app_client):
    c = app_client
    _refuse_enqueue(c)
    for extra in ({"continuation_start": 0}, {"continuation_start": 0.0, "continuation_end": 1}):
        r = c.post("/v1/ai/audio_generation", headers=c.headers,
                   json={**GOOD, "configs": {**GOOD["configs"], **extra}})
        assert r.status_code == 422 and "need configs.input_audio" in r.json()["error_description"], r.text
    assert c.svc.store.count() == 0


def test_the_elevenlabs_schema_states_this_servers_limits(tmp_path, tiny_models):
    with TestClient(create_app(make_settings(tmp_path, max_prompt_chars=50, max_duration=10),
                               start_worker=False)) as c:
        svc = c.app.state.services
        key = svc.accounts.create_api_key(svc.accounts.create_user("ann", PASSWORD))
        post = c.get("/openapi.json").json()["paths"]["/v1/sound-generation"]["post"]
        props = post["requestBody"]["content"]["application/json"]["schema"]["properties"]
        assert props["text"]["maxLength"] == 50
        assert [o["maximum"] for o in props["duration_seconds"]["anyOf"] if "maximum" in o] == [10]
        for body in ({"text": "a" * 51}, {"text": "rain", "duration_seconds": 10.5}):  # what the schema refuses
            r = c.post("/v1/sound-generation", json=body, headers={"xi-api-key": key})
            assert r.status_code == 422, r.text


def test_the_documented_examples_are_accepted_without_dns(app_client, monkeypatch):
    """Every example the OpenAPI document gives for the create body is one the server accepts, here
    with no DNS at all (a fuzzer sends the examples as they are)."""
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "no DNS in this test")

    monkeypatch.setattr(webhook_target, "getaddrinfo", no_dns)
    c = app_client
    doc = c.get("/openapi.json").json()["components"]["schemas"]
    bodies = list(doc["CreateTask"].get("examples", []))
    for name, prop in doc["CreateTask"]["properties"].items():
        for example in prop.get("examples", []) + ([prop["example"]] if "example" in prop else []):
            bodies.append({**GOOD, name: example})
    assert bodies
    for body in bodies:
        r = c.post("/v1/ai/audio_generation", headers=c.headers, json=body)
        assert r.status_code == 201, (body, r.text)

"""The Python client and the CLI against a live server with the tiny models."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import pytest
import soundfile as sf

from soundry import Client
from soundry.cli.main import main
from soundry.client import AuthenticationError, ConflictError, InvalidRequestError, NotFoundError, TaskCanceledError
from tests.live_server import free_port


def test_generate_with_api_key_and_progress(live_server):
    seen = []
    with Client(live_server.url, api_key=live_server.api_key) as client:
        audio = client.generate("rain on a tin roof", model="audiogen", duration=1.0, seed=3,
                                progress=lambda t: seen.append((t.status, t.percent)))
    samples, sr = audio.to_numpy()
    assert sr == 16000 == audio.sample_rate and len(samples) == 16000 and audio.format == "wav"
    assert seen[-1] == ("COMPLETED", 100)
    assert [p for _, p in seen] == sorted(p for _, p in seen)  # progress only moves forward


def test_password_login_submit_wait_history_and_refresh(live_server):
    client = Client(live_server.url + "/v1", username=live_server.username, password=live_server.password)
    task = client.submit("calm piano", model="musicgen", duration=0.5, output_format="flac")
    assert task.wait(timeout=60).status == "COMPLETED"
    assert task.audio().format == "flac"
    assert task.id in [t.id for t in client.history()]
    client._access = "expired-or-garbage"  # the client renews with its refresh token
    assert client.me()["username"] == live_server.username


def test_errors_are_typed_and_carry_the_server_code(live_server):
    client = Client(live_server.url, api_key=live_server.api_key)
    with pytest.raises(InvalidRequestError) as err:
        client.submit("x", duration=-1)
    assert err.value.status == 422 and err.value.code == "invalid_config" and "duration" in err.value.description
    with pytest.raises(NotFoundError):
        client.task("0" * 32)
    with pytest.raises(AuthenticationError):
        Client(live_server.url, api_key="sk-nope.nope").me()
    with pytest.raises(AuthenticationError):
        Client(live_server.url, username=live_server.username, password="wrong password").me()
    done = client.submit("short", duration=0.2)
    done.wait(timeout=60)
    with pytest.raises(ConflictError):
        done.cancel()


def test_cancel_while_running(live_server):
    client = Client(live_server.url, api_key=live_server.api_key)
    task = client.submit("a long drone", duration=120)
    task.cancel()
    with pytest.raises(TaskCanceledError):
        task.wait(timeout=60)


def test_events_stream_ends_with_done(live_server):
    client = Client(live_server.url, api_key=live_server.api_key)
    task = client.submit("wind", duration=2.0)
    events = list(client.events(task.id, timeout=60))
    assert events[-1][0] == "done" and events[-1][1]["status"] == "COMPLETED"
    assert events[-1][1]["url_download"]
    assert all(name == "status" for name, _ in events[:-1])
    percents = [e["percent"] for _, e in events]
    assert percents == sorted(percents)
    other = httpx.get(f"{live_server.url}/v1/ai/audio_generation/{task.id}/events")
    assert other.status_code == 401


def _receiver(statuses: list[int]):
    """A local HTTP server that answers POSTs with the given statuses in turn and records them."""
    got: list[tuple[dict, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((dict(self.headers), body))
            self.send_response(statuses[min(len(got), len(statuses)) - 1])
            self.end_headers()

        def log_message(self, *a):
            pass

    server = HTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, got


@pytest.fixture
def local_hooks_server(tmp_path, tiny_models):
    """A live server whose operator allows webhooks to this machine (127.0.0.0/8): the receivers here
    listen on 127.0.0.1, which soundry refuses by default."""
    from tests.conftest import make_settings
    from tests.live_server import start_live_server

    server = start_live_server(make_settings(tmp_path, webhook_backoff=0.2, webhook_allow_cidrs="127.0.0.0/8"))
    yield server
    server.stop()


def test_webhook_is_signed_and_retried(local_hooks_server):
    live_server = local_hooks_server
    server, got = _receiver([500, 200])  # the first delivery fails, the retry succeeds
    url = f"http://127.0.0.1:{server.server_port}/hook"
    try:
        client = Client(live_server.url, api_key=live_server.api_key)
        secret = client.me()["webhook_secret"]
        task = client.submit("thunder", duration=0.5, webhook=url)
        task.wait(timeout=60)
        deadline = threading.Event()
        for _ in range(100):
            if len(got) >= 2 and live_server.services.store.get(task.id).webhook_state == "delivered":
                break
            deadline.wait(0.1)
        assert len(got) == 2 and live_server.services.store.get(task.id).webhook_state == "delivered"
        headers, body = got[-1]
        payload = json.loads(body)
        assert payload["data"]["task_id"] == task.id and payload["data"]["status"] == "COMPLETED"
        assert headers["X-Soundry-Event"] == "task.completed"
        t, v1 = (part.split("=", 1)[1] for part in headers["X-Soundry-Signature"].split(","))
        expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(v1, expected)
        with pytest.raises(InvalidRequestError):
            client.submit("x", webhook="ftp://example.com/x")
    finally:
        server.shutdown()


def test_cli_against_the_server(live_server, tmp_path, capsys):
    conn = ["--url", live_server.url, "--api-key", live_server.api_key]
    out = tmp_path / "rain.ogg"
    assert main(["generate", "rain on a tin roof", "-o", str(out), "--duration", "1", "--seed", "2", *conn]) == 0
    audio, sr = sf.read(out)
    assert sr == 16000 and len(audio) == 16000
    assert "wrote" in capsys.readouterr().out
    assert main(["tasks", "list", *conn]) == 0
    listing = capsys.readouterr().out
    assert "COMPLETED" in listing and "rain on a tin roof" in listing
    task_id = listing.split()[0]
    assert main(["tasks", "show", task_id, *conn]) == 0
    assert "url_download" in capsys.readouterr().out
    assert main(["tasks", "cancel", task_id, *conn]) == 1
    assert "already" in capsys.readouterr().err
    assert main(["models", "list", *conn]) == 0
    assert "musicgen-small" in capsys.readouterr().out
    assert main(["generate", "x", "-o", str(tmp_path / "x.wav"), "--duration", "-2", *conn]) == 1
    assert "duration" in capsys.readouterr().err


def test_input_audio_from_the_client_and_the_cli(live_server, tmp_path, capsys):
    import numpy as np

    clip = tmp_path / "loop.flac"
    sf.write(clip, (0.3 * np.sin(np.arange(8000) / 16000 * 2 * np.pi * 330)).astype("float32"), 16000)
    with Client(live_server.url, api_key=live_server.api_key) as client:
        audio = client.generate("more of this", model="audiogen", duration=1.0, input_audio=clip)
        samples, rate = audio.to_numpy()
        assert len(samples) == 16000 and rate == 16000
        assert client.task(audio.task_id).status == "COMPLETED"  # polling reads the result object
        up = client.upload(clip)
        assert up["duration"] == 0.5
        assert client.delete_upload(up["id"])["id"] == up["id"]
        with pytest.raises(NotFoundError):
            client.submit("x", input_audio=up["id"], duration=2)
    out = tmp_path / "more.wav"
    conn = ["--url", live_server.url, "--api-key", live_server.api_key]
    assert main(["generate", "more", "-o", str(out), "--duration", "1", "--input-audio", str(clip),
                 "--continuation-start", "0.1", *conn]) == 0
    audio, sr = sf.read(out)
    assert sr == 16000 and len(audio) == 16000


def test_pending_webhooks_are_resumed_after_a_restart(tmp_path, tiny_models):
    from fastapi.testclient import TestClient

    from soundry.api.app import create_app
    from soundry.tasks.models import Task
    from tests.conftest import make_settings

    server, got = _receiver([200])
    try:
        settings = make_settings(tmp_path, webhook_allow_cidrs="127.0.0.0/8")  # the receiver is on this machine
        app = create_app(settings, start_worker=False)
        svc = app.state.services
        user = svc.accounts.create_user("wes", "wes password")
        task = svc.store.create(Task(user_id=user.id, prompt="p", config={"duration": 1}, model="audiogen",
                                     status="FAILED", error="boom",
                                     webhook=f"http://127.0.0.1:{server.server_port}/h", webhook_state="pending"))
        with TestClient(create_app(settings)):  # the "restarted" process
            for _ in range(100):
                if svc.store.get(task.id).webhook_state == "delivered":
                    break
                threading.Event().wait(0.1)
        assert svc.store.get(task.id).webhook_state == "delivered"
        assert json.loads(got[0][1])["data"]["error_description"] == "boom"
    finally:
        server.shutdown()

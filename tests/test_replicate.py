"""Replicate's API with the unmodified ``replicate`` client (1.0.7) against a live soundry, and Cog's local
API with plain HTTP (tiny models, short clips)."""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import pytest
import replicate
import soundfile as sf
from replicate.exceptions import ReplicateError

from tests.conftest import make_settings
from tests.helpers_models import TINY
from tests.live_server import start_live_server

MUSIC = {"model_version": "stereo-large", "prompt": "calm piano over rain", "duration": 0.5}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # meta/musicgen's versions on the tiny checkpoints
        mp.setenv("SOUNDRY_MODEL_PATHS", f"audiogen={TINY['audiogen']},musicgen={TINY['musicgen']},"
                                         f"musicgen-large={TINY['musicgen']},"
                                         f"musicgen-stereo-large={TINY['musicgen-stereo']},"
                                         f"musicgen-stereo-melody-large={TINY['musicgen-stereo-melody']}")
        live = start_live_server(make_settings(tmp_path_factory.mktemp("replicate"),
                                               mbd_path=str(TINY["musicgen-stereo"] / "mbd")))
        yield live
        live.stop()


def _client(server, token: str | None = None) -> replicate.Client:
    return replicate.Client(api_token=token or server.api_key, base_url=server.url)


def _audio(output) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(io.BytesIO(output.read()), always_2d=True)
    return audio, rate


def test_run_musicgen_wav_mp3_and_a_seed_that_reproduces(server):
    client = _client(server)
    first = client.run("meta/musicgen", input={**MUSIC, "seed": 7})
    assert isinstance(first, replicate.helpers.FileOutput) and first.url.startswith("data:audio/wav;base64,")
    audio, rate = _audio(first)
    assert rate == 32000 and audio.shape[1] == 2 and abs(len(audio) / rate - 0.5) < 0.05
    again = client.run("meta/musicgen", input={**MUSIC, "seed": 7})
    assert again.read() == first.read()
    mp3 = client.run("meta/musicgen", input={**MUSIC, "model_version": "large", "output_format": "mp3"}).read()
    assert mp3[:3] == b"ID3" or mp3[0] == 0xFF


def test_run_audiogen(server):
    audio, rate = _audio(_client(server).run("sepal/audiogen", input={"prompt": "a dog barks", "duration": 0.5}))
    assert rate == 16000 and abs(len(audio) / rate - 0.5) < 0.05
    own = _client(server).run("soundry/audiogen", input={"prompt": "rain", "duration": 0.5, "output_format": "flac",
                                                         "top_p": 0.5, "negative_prompt": "wind"})
    assert own.url.startswith("data:audio/flac;base64,") and _audio(own)[1] == 16000


def test_create_wait_get_list_and_cancel(server):
    client = _client(server)
    p = client.predictions.create(model="meta/musicgen", input=MUSIC)
    assert p.status in ("starting", "processing") and p.urls["get"].endswith(f"/v1/predictions/{p.id}")
    p.wait()
    assert p.status == "succeeded" and p.output.startswith("data:audio/wav") and p.metrics["predict_time"] > 0
    got = client.predictions.get(p.id)
    assert got.status == "succeeded" and got.input == MUSIC and got.model == "meta/musicgen"
    assert p.id in [q.id for q in client.predictions.list().results]
    long = client.predictions.create(model="meta/musicgen", input={**MUSIC, "duration": 60}, wait=1)
    assert long.status == "starting"  # Prefer: wait=1 ran out first (as Replicate answers, so run() polls on)
    long.cancel()
    assert long.status == "canceled" and client.predictions.get(long.id).status == "canceled"
    # the same task on soundry's own API
    r = httpx.get(f"{server.url}/v1/ai/audio_generation/{long.id}",
                  headers={"Authorization": f"Bearer {server.api_key}"})
    assert r.json()["data"]["data"]["status"] == "CANCELED"
    by_version = client.predictions.create(version=client.models.get("sepal/audiogen").latest_version.id,
                                           input={"prompt": "rain", "duration": 0.5}, wait=30)
    assert by_version.status == "succeeded" and by_version.model == "sepal/audiogen"


def test_continuation_of_a_local_file_uploaded_by_the_client(server, tmp_path):
    clip = tmp_path / "start.wav"
    t = np.arange(32000) / 32000
    sf.write(clip, 0.3 * np.sin(2 * np.pi * 440 * t), 32000)
    uploads = server.services.uploads.count(1)
    with open(clip, "rb") as f:
        out = _client(server).run("meta/musicgen", input={**MUSIC, "model_version": "large", "input_audio": f,
                                                          "continuation": True, "duration": 1.5})
    audio, rate = _audio(out)
    assert server.services.uploads.count(1) == uploads + 1  # through POST /v1/files
    assert abs(len(audio) / rate - 1.5) < 0.05


def _refused(call, status: int = 422) -> ReplicateError:
    with pytest.raises(ReplicateError) as err:
        call()
    assert err.value.status == status, err.value
    return err.value


def _task(server, prediction_id: str) -> dict:
    r = httpx.get(f"{server.url}/v1/ai/audio_generation/{prediction_id}",
                  headers={"Authorization": f"Bearer {server.api_key}"})
    return r.json()["data"]["data"]


def test_input_audio_without_continuation_is_the_melody_of_a_melody_version(server):
    client = _client(server)
    march = {"prompt": "a march", "duration": 0.5, "seed": 4}  # model_version: stereo-melody-large, the default
    plain = client.predictions.create(model="meta/musicgen", input=march)
    f = client.files.create(io.BytesIO(_wav(tone=True)), filename="tune.wav")
    followed = client.predictions.create(model="meta/musicgen", input={**march, "input_audio": f.urls["get"]})
    plain.wait()
    followed.wait()
    assert plain.status == followed.status == "succeeded", (plain.error, followed.error)
    assert _task(server, followed.id)["config"]["melody"] == f.id
    a, b = (sf.read(io.BytesIO(_data(p.output)), always_2d=True)[0] for p in (plain, followed))
    assert a.shape == b.shape and a.shape[1] == 2 and not np.allclose(a, b, atol=1e-4)
    err = _refused(lambda: client.run("meta/musicgen", input={**MUSIC, "input_audio": f.urls["get"]}))
    assert err.detail.startswith("input_audio:") and "melody" in err.detail  # stereo-large takes no melody
    other = server.services.accounts.create_user("melody-thief", "melody thief's password")
    theirs = _client(server, server.services.accounts.create_api_key(other))
    err = _refused(lambda: theirs.run("meta/musicgen", input={**march, "input_audio": f.urls["get"]}), 404)
    assert err.detail.startswith("input_audio:")


def test_multi_band_diffusion_decodes_with_mbd(server):
    p = _client(server).predictions.create(model="meta/musicgen", input={
        **MUSIC, "duration": 0.3, "seed": 2, "multi_band_diffusion": True})
    p.wait()
    assert p.status == "succeeded", p.error
    audio, rate = sf.read(io.BytesIO(_data(p.output)), always_2d=True)
    assert rate == 32000 and audio.shape == (9600, 2)
    assert _task(server, p.id)["decoder"] == "mbd"


def test_input_audio_elsewhere_is_refused_and_never_fetched(server):
    client = _client(server)
    f = client.files.create(io.BytesIO(_wav()), filename="a.wav")
    for url in (f"https://example.com/v1/files/{f.id}", "http://127.0.0.1:9/clip.wav", "data:audio/wav;base64,AAAA"):
        err = _refused(lambda u=url: client.run("meta/musicgen", input={**MUSIC, "input_audio": u,
                                                                        "continuation": True}))
        assert err.detail.startswith("input_audio:"), err.detail
    other = server.services.accounts.create_user("mallory", "mallory's password")
    theirs = _client(server, server.services.accounts.create_api_key(other))
    err = _refused(lambda: theirs.run("meta/musicgen", input={**MUSIC, "input_audio": f.urls["get"],
                                                              "continuation": True}), 404)
    assert "input_audio" in err.detail


def test_bad_input_is_422_with_the_field_and_a_bad_token_401(server):
    client = _client(server)
    for inp, field in (({**MUSIC, "duration": -1}, "duration"), ({**MUSIC, "top_k": "many"}, "top_k"),
                       ({**MUSIC, "tempo": 120}, "tempo"), ({**MUSIC, "normalization_strategy": "x"},
                                                            "normalization_strategy")):
        err = _refused(lambda i=inp: client.predictions.create(model="meta/musicgen", input=i))
        assert err.detail.startswith(f"{field}:"), err.detail
    r = httpx.post(f"{server.url}/v1/models/meta/musicgen/predictions", json={"input": {**MUSIC, "duration": 0}},
                   headers={"Authorization": f"Token {server.api_key}"})
    assert r.status_code == 422 and r.json()["invalid_fields"][0]["field"] == "duration"
    _refused(lambda: _client(server, "r8_not-a-soundry-key").run("meta/musicgen", input=MUSIC), 401)
    _refused(lambda: client.run("acme/unknown", input=MUSIC), 404)


def test_files_get_and_delete_and_the_models_schema(server):
    client = _client(server)
    f = client.files.create(io.BytesIO(_wav()), filename="a.wav")
    assert client.files.get(f.id).id == f.id
    assert client.files.delete(f.id)
    _refused(lambda: client.files.get(f.id), 404)
    version = client.models.get("meta/musicgen").latest_version
    inputs = version.openapi_schema["components"]["schemas"]["Input"]["properties"]
    assert {"prompt", "duration", "model_version", "input_audio", "continuation", "seed"} <= set(inputs)


def _wav(seconds: float = 1.0, tone: bool = False) -> bytes:
    t = np.arange(int(32000 * seconds)) / 32000
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(2 * np.pi * 440 * t) if tone else np.zeros_like(t), 32000, format="WAV")
    return buf.getvalue()


# -- Cog's local API -------------------------------------------------------------------------------------------
def test_cog_sync_async_cancel_and_health(server):
    auth = {"Authorization": f"Bearer {server.api_key}"}
    with httpx.Client(base_url=server.url, headers=auth, timeout=60) as http:
        assert http.get("/health-check").json()["status"] == "READY"
        r = http.post("/predictions", json={"input": {"prompt": "a waltz", "duration": 0.5}})
        assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
        audio, rate = sf.read(io.BytesIO(_data(r.json()["output"])), always_2d=True)
        assert rate == 32000 and abs(len(audio) / rate - 0.5) < 0.05  # cog_model: musicgen (the default)
        r = http.post("/predictions", json={"input": {"prompt": "a waltz", "duration": 60}},
                      headers={"Prefer": "respond-async"})
        assert r.status_code == 202 and r.json()["status"] in ("starting", "processing")
        assert http.post(f"/predictions/{r.json()['id']}/cancel").json() == {}
        put = http.put("/predictions/my-job-1", json={"input": {"prompt": "a waltz", "duration": 60}})
        assert put.status_code == 202 and put.json()["id"] == "my-job-1"
        again = http.put("/predictions/my-job-1", json={"input": {"prompt": "a waltz", "duration": 60}})
        assert again.status_code == 202 and again.json()["created_at"] == put.json()["created_at"]
        assert http.post("/predictions/my-job-1/cancel").status_code == 200
        assert _wait_status(server, r.json()["id"]) == _wait_status(server, _cog_task(server, "my-job-1")) == "CANCELED"
        assert http.post("/predictions/nobody/cancel").status_code == 404
        bad = http.post("/predictions", json={"input": {"prompt": "a waltz", "duration": -1}})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "input", "duration"]
        assert http.post("/predictions", json={"input": {"prompt": "x"}}, headers={"Authorization": "Bearer no"}
                         ).status_code == 401


def _data(url: str) -> bytes:
    import base64

    return base64.b64decode(url.split(",", 1)[1])


def _cog_task(server, cog_id: str) -> str:
    from soundry.api.cog.routes import _task_id

    user = server.services.accounts.user_for_bearer(server.api_key)
    return _task_id(user, cog_id)


def _wait_status(server, task_id: str) -> str:
    for _ in range(100):
        task = server.services.store.get(task_id)
        if task.status in ("COMPLETED", "FAILED", "CANCELED"):
            return task.status
        time.sleep(0.05)
    return task.status


class _Receiver:
    """A webhook receiver on 127.0.0.1 that records what it is sent (``gate``: each answer waits for it)."""

    def __init__(self, gate=None):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        got = self.got = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                got.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
                if gate is not None:
                    gate.wait(30)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_port}/hook"
        import threading

        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self):
        self.http.shutdown()
        self.http.server_close()

    def events(self, task_id: str) -> list[tuple[str, dict]]:
        """(X-Soundry-Event, body) of each delivery for one task, in arrival order."""
        import json

        return [(h["X-Soundry-Event"], json.loads(b)) for h, b in list(self.got) if h["X-Soundry-Task"] == task_id]

    def wait_for(self, task_id: str, event: str) -> list[tuple[str, dict]]:
        for _ in range(200):
            if any(e == event for e, _ in self.events(task_id)):
                break
            time.sleep(0.05)
        return self.events(task_id)


def test_webhooks_send_the_prediction_signed_and_follow_the_filter(server):
    import json

    from soundry.signing import webhook_secret, webhook_signature

    svc, receiver = server.services, _Receiver()
    svc.settings.webhook_allow_cidrs = ["127.0.0.0/8"]  # this server may call the receiver on loopback
    svc.webhooks.allowed = svc.settings.webhook_networks()
    try:
        client = _client(server)
        err = _refused(lambda: client.predictions.create(model="meta/musicgen", input=MUSIC,
                                                         webhook="http://10.9.8.7/hook"))
        assert err.detail.startswith("webhook:")
        err = _refused(lambda: client.predictions.create(model="meta/musicgen", input=MUSIC, webhook="ftp://h/x"))
        assert err.detail == "webhook: webhook must be an absolute http:// or https:// URL with a host name or address"
        p = client.predictions.create(model="meta/musicgen", input=MUSIC, webhook=receiver.url,
                                      webhook_events_filter=["start", "completed"])
        only_output = client.predictions.create(model="meta/musicgen", input=MUSIC, webhook=receiver.url,
                                                webhook_events_filter=["output"])
        every = client.predictions.create(model="meta/musicgen", input=MUSIC, webhook=receiver.url)
        for q in (p, only_output, every):
            q.wait()
        got = receiver.wait_for(p.id, "completed")
        assert [(e, b["status"]) for e, b in got] == [("start", "processing"), ("completed", "succeeded")], got
        assert got[0][1]["output"] is None and got[0][1]["started_at"] and got[0][1]["logs"].startswith("  0%|")
        got = receiver.wait_for(only_output.id, "output")
        assert [e for e, _ in got] == ["output"] and got[0][1]["status"] == "succeeded"
        assert got[0][1]["output"].startswith(server.url + "/v1/files/")
        got = receiver.wait_for(every.id, "completed")
        names = [e for e, _ in got]  # logs events appear between start and output when progress was stored
        assert names[0] == "start" and names[-2:] == ["output", "completed"] and set(names[1:-2]) <= {"logs"}
        headers, body = next(g for g in receiver.got if g[0]["X-Soundry-Task"] == p.id
                             and g[0]["X-Soundry-Event"] == "completed")
        sent = json.loads(body)
        assert sent["id"] == p.id and sent["status"] == "succeeded" and sent["model"] == "meta/musicgen"
        assert sent["input"] == MUSIC and sent["output"].startswith(server.url + "/v1/files/")
        assert svc.store.get(p.id).webhook_state == "delivered"
        assert svc.store.get(only_output.id).webhook_state == ""  # no completed event asked for: nothing pending
        t = int(headers["X-Soundry-Signature"].split(",")[0][2:])
        user = svc.accounts.user_for_bearer(server.api_key)
        secret = webhook_secret(svc.settings.secret, user.id)
        assert headers["X-Soundry-Signature"] == webhook_signature(secret, body, t)
        assert httpx.get(sent["output"]).content[:4] == b"RIFF"
    finally:
        svc.settings.webhook_allow_cidrs = []
        svc.webhooks.allowed = svc.settings.webhook_networks()
        receiver.close()


def test_logs_webhooks_are_coalesced_one_in_flight(server):
    """Progress lines reach a prediction's webhook as ``logs`` events: while one delivery is held by the
    receiver, newer progress makes one more delivery (with the newest lines), not one per step."""
    import datetime as dt
    import threading

    from soundry.api.predictions.core import version_id
    from soundry.tasks.models import Task, utcnow

    svc, gate = server.services, threading.Event()
    receiver = _Receiver(gate)
    svc.settings.webhook_allow_cidrs = ["127.0.0.0/8"]
    svc.webhooks.allowed = svc.settings.webhook_networks()
    try:
        user = svc.accounts.user_for_bearer(server.api_key)
        wire = {"model": "meta/musicgen", "version": version_id("meta/musicgen"), "input": MUSIC,
                "events": ["logs", "completed"]}
        task = svc.store.create(Task(user_id=user.id, prompt="p", model="musicgen", webhook=receiver.url,
                                     status="PROCESSING", config={"duration": 0.5, "prediction": wire},
                                     worker="the test", lease_until=utcnow()
                                     + dt.timedelta(hours=1)))  # held: the server's worker leaves it alone
        svc.webhooks.started(svc.store.get(task.id))
        for percent in (5, 10):  # 5 % adds no line; 10 % does
            svc.store.set_percent(task.id, percent)
            svc.webhooks.progressed(task.id, percent)
        receiver.wait_for(task.id, "logs")  # the first one is held by the receiver now
        for percent in range(11, 100):
            svc.store.set_percent(task.id, percent)
            svc.webhooks.progressed(task.id, percent)
        time.sleep(0.3)  # a second delivery, were it allowed while the first is held, would arrive now
        assert len(receiver.events(task.id)) == 1
        gate.set()
        for _ in range(200):  # the coalesced one: the newest lines
            if len(receiver.events(task.id)) == 2:
                break
            time.sleep(0.05)
        svc.store.fail(task.id, "stopped by the test")
        svc.webhooks.notify(task.id, "FAILED")
        got = receiver.wait_for(task.id, "completed")  # after every logs delivery (one task's go in order)
        assert [e for e, _ in got] == ["logs", "logs", "completed"], [e for e, _ in got]
        assert got[0][1]["logs"].splitlines()[-1].startswith(" 10%|#")
        assert got[1][1]["status"] == "processing" and got[1][1]["logs"].splitlines()[-1].startswith(" 90%|#########")
        assert got[2][1]["status"] == "failed" and got[2][1]["error"] == "stopped by the test"
    finally:
        gate.set()
        svc.settings.webhook_allow_cidrs = []
        svc.webhooks.allowed = svc.settings.webhook_networks()
        receiver.close()


# -- nothing accepted and ignored (issue 30 item 14) -----------------------------------------------------------
def test_stream_true_gives_urls_stream_of_the_live_audio(server):
    auth = {"Authorization": f"Bearer {server.api_key}"}
    with httpx.Client(base_url=server.url, headers=auth, timeout=120) as http:
        r = http.post("/v1/models/sepal/audiogen/predictions", headers={"Prefer": "wait"},
                      json={"input": {"prompt": "rain", "duration": 0.5}, "stream": True})
        assert r.status_code == 201 and r.json()["status"] == "succeeded", r.text
        link = r.json()["urls"]["stream"]
        assert "sig=" in link
        audio = httpx.get(link, timeout=60)  # no header: a signed link (the stored file once it ended)
        assert audio.status_code == 200 and audio.headers["content-type"].startswith("audio/")
        plain = http.post("/v1/models/sepal/audiogen/predictions", json={"input": {"prompt": "rain",
                                                                                  "duration": 0.5}})
        assert "stream" not in plain.json()["urls"]


def test_two_webhook_urls_are_refused_not_one_dropped(server):
    auth = {"Authorization": f"Bearer {server.api_key}"}
    r = httpx.post(server.url + "/v1/models/sepal/audiogen/predictions", headers=auth, json={
        "input": {"prompt": "rain", "duration": 0.5}, "webhook": "https://a.example/hook",
        "webhook_completed": "https://b.example/hook"})
    assert r.status_code == 422 and r.json()["invalid_fields"][0]["field"] == "webhook_completed", r.text


def test_cog_fields_soundry_cannot_honour_are_refused_and_a_post_id_is_kept(server):
    auth = {"Authorization": f"Bearer {server.api_key}", "Prefer": "respond-async"}
    inp = {"prompt": "a waltz", "duration": 0.5}
    with httpx.Client(base_url=server.url, headers=auth, timeout=60) as http:
        for extra, field in (({"output_file_prefix": "s3://bucket/out/"}, "output_file_prefix"),
                             ({"context": {"k": "v"}}, "context"), ({"stream": True}, "stream")):
            r = http.post("/predictions", json={"input": inp, **extra})
            assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == field, r.text
        first = http.post("/predictions", json={"input": inp, "id": "job-7"})
        again = http.post("/predictions", json={"input": inp, "id": "job-7"})
        assert first.status_code == again.status_code == 202, first.text
        assert first.json()["id"] == again.json()["id"] == "job-7"
        http.post("/predictions/job-7/cancel")


def test_a_poll_of_a_finished_prediction_sends_a_link_past_max_inline_output_bytes(server):
    """Issue 30 item 2: every poll of a finished prediction re-sent its file as base64 (a 300 s stereo WAV is
    ~50 MB per poll). Past ``max_inline_output_bytes`` the output is a signed link: each poll is a few hundred
    bytes, and replicate.run and predictions.create + wait() still give the audio."""
    settings = server.services.settings
    small = {"prompt": "rain", "duration": 2.0}
    inline = _client(server).run("sepal/audiogen", input=small)
    assert inline.url.startswith("data:audio/wav;base64,")  # 2 s (64 KB): under the default, inline
    before, settings.max_inline_output_bytes = settings.max_inline_output_bytes, 16 * 1024
    try:
        client = _client(server)
        link = client.run("sepal/audiogen", input=small)
        assert isinstance(link, str) and link.startswith(server.url) and "sig=" in link
        audio, rate = sf.read(io.BytesIO(httpx.get(link, timeout=60).content), always_2d=True)
        assert rate == 16000 and abs(len(audio) / rate - 2.0) < 0.05
        p = client.predictions.create(model="sepal/audiogen", input=small)
        p.wait()
        assert p.status == "succeeded" and "sig=" in p.output
        auth = {"Authorization": f"Bearer {server.api_key}"}
        polls = [httpx.get(f"{server.url}/v1/predictions/{p.id}", headers=auth, timeout=60) for _ in range(3)]
        assert all(len(r.content) < 4096 for r in polls), [len(r.content) for r in polls]
    finally:
        settings.max_inline_output_bytes = before

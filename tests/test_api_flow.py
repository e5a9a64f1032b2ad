"""The FlexStack-compatible flow end to end on embedded defaults with a tiny model."""

import io
from urllib.parse import urlparse

import soundfile as sf

from tests.conftest import basic, wait_for

EXAMPLE = {"prompt": "dog barking in the distance",
           "configs": {"model": "audiogen", "duration": 1, "top_k": 15, "top_p": 0.9}}


def test_envelope_shape(client):
    body = client.get("/v1/ai/models").json()
    assert set(body) == {"data", "errors", "error_description", "start_time", "end_time",
                         "host_of_client_call_request", "total_time_by_second", "status"}
    assert body["status"] == "success" and body["errors"] == []
    assert len(body["start_time"]) == len("2026-11-24 10:00:00.123456")


def test_login_create_poll_download(client, user):
    r = client.post("/v1/ai/audio_generation", json=EXAMPLE, headers=user["headers"])
    assert r.status_code == 201, r.text
    data = r.json()["data"]
    assert len(data["task_id"]) == 32 and data["task_id"] == data["task_id"].lower()
    assert data["config"] | {} == data["config"]
    assert data["config"]["task_name"] == "tasks.audiogen_task"
    assert data["config"]["queue_name"] == "audiogen_queue"
    assert data["config"]["task_type"] == "TEXT-TO-AUDIO"
    assert data["config"]["top_k"] == 15 and data["config"]["temperature"] == 1.0

    result = wait_for(client, data["task_id"], user["headers"])
    assert result["status"] == "COMPLETED", result
    assert result["percent"] == 100 and result["total_tasks"] == 1
    url = urlparse(result["url_download"])
    assert url.scheme == "http" and url.path.startswith("/v1/files/")
    audio = client.get(f"{url.path}?{url.query}")  # no Authorization header
    assert audio.status_code == 200
    wav, sr = sf.read(io.BytesIO(audio.content))
    assert sr == 16000 and len(wav) == 16000
    assert audio.headers["content-type"].startswith("audio/wav")


def test_musicgen_task(client, user):
    body = {"prompt": "calm piano", "configs": {"model": "musicgen", "duration": 0.5, "seed": 3}}
    task_id = client.post("/v1/ai/audio_generation", json=body, headers=user["headers"]).json()["data"]["task_id"]
    result = wait_for(client, task_id, user["headers"])
    assert result["status"] == "COMPLETED" and result["sample_rate"] == 32000
    assert result["config"]["queue_name"] == "musicgen_queue" and result["seed"] == 3


def test_refresh_me_history_models(client, user):
    r = client.post("/v1/user/refresh_token", data={"refresh_token": user["refresh_token"]})
    assert r.status_code == 200
    fresh = r.json()["data"]
    assert fresh["username"] == "alice" and fresh["expires_in"] > 0
    headers = {"Authorization": f"Bearer {fresh['access_token']}"}
    for method in (client.get, client.post):
        me = method("/v1/user/me", headers=headers).json()["data"]
        assert me["username"] == "alice" and me["email"] == "alice@example.com"
    ids = [client.post("/v1/ai/audio_generation", json=EXAMPLE, headers=headers).json()["data"]["task_id"]
           for _ in range(2)]
    hist = client.get("/v1/user/history", headers=headers).json()["data"]
    assert hist["total"] == 2 and [t["task_id"] for t in hist["tasks"]] == ids[::-1]
    models = client.get("/v1/models/audio_generation").json()["data"]
    assert {"model": "audiogen"} .items() <= models[0].items() and "metadata" in models[0]
    names = [m["model"] for m in client.get("/v1/ai/models").json()["data"]["models"]]
    assert "audiogen" in names and "musicgen" in names
    # an access token is not a refresh token and vice versa
    assert client.post("/v1/user/refresh_token", data={"refresh_token": fresh["access_token"]}).status_code == 401
    assert client.get("/v1/user/me", headers={"Authorization": f"Bearer {fresh['refresh_token']}"}).status_code == 401


def test_api_key_works_as_bearer(client, user):
    svc = client.app_services
    key = svc.accounts.create_api_key(svc.accounts.get_user("alice"))
    assert client.get("/v1/user/me", headers={"Authorization": f"Bearer {key}"}).json()["data"]["username"] == "alice"
    svc.accounts.revoke_api_key(key)
    assert client.get("/v1/user/me", headers={"Authorization": f"Bearer {key}"}).status_code == 401


def test_users_are_isolated(client, user):
    svc = client.app_services
    svc.accounts.create_user("bob", "another password")
    bob = client.post("/v1/user/login", headers=basic("bob", "another password")).json()["data"]
    bob_headers = {"Authorization": f"Bearer {bob['access_token']}"}
    task_id = client.post("/v1/ai/audio_generation", json=EXAMPLE, headers=user["headers"]).json()["data"]["task_id"]
    r = client.get(f"/v1/ai/audio_generation/{task_id}", headers=bob_headers)
    assert r.status_code == 404 and r.json()["errors"] == ["not_found"]
    assert client.post(f"/v1/ai/audio_generation/{task_id}/cancel", headers=bob_headers).status_code == 404
    assert client.get("/v1/user/history", headers=bob_headers).json()["data"]["total"] == 0
    wait_for(client, task_id, user["headers"])


def test_cancel(client, user):
    body = {"prompt": "long rain", "configs": {"duration": 30}}
    task_id = client.post("/v1/ai/audio_generation", json=body, headers=user["headers"]).json()["data"]["task_id"]
    r = client.post(f"/v1/ai/audio_generation/{task_id}/cancel", headers=user["headers"])
    assert r.status_code == 200 and r.json()["data"]["data"]["status"] == "CANCELED"
    assert client.post(f"/v1/ai/audio_generation/{task_id}/cancel", headers=user["headers"]).status_code == 409
    assert wait_for(client, task_id, user["headers"])["url_download"] is None


def test_signed_url_tampering(client, user):
    task_id = client.post("/v1/ai/audio_generation", json=EXAMPLE, headers=user["headers"]).json()["data"]["task_id"]
    url = urlparse(wait_for(client, task_id, user["headers"])["url_download"])
    assert client.get(url.path + "?" + url.query.replace("sig=", "sig=0")).status_code == 403
    expires = [p for p in url.query.split("&") if p.startswith("expires=")][0]
    assert client.get(url.path + "?" + url.query.replace(expires, "expires=1000")).status_code == 403

"""Auth hardening, limits and the ops endpoints."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from soundry.api.app import create_app
from tests.conftest import PASSWORD, basic, make_settings, wait_for


def _create(client, headers, duration=0.5, **cfg):
    return client.post("/v1/ai/audio_generation", headers=headers,
                       json={"prompt": "tick", "configs": {"duration": duration, **cfg}})


def test_refresh_tokens_rotate_and_reuse_revokes_all(client, user):
    first = user["refresh_token"]
    r = client.post("/v1/user/refresh_token", data={"refresh_token": first})
    assert r.status_code == 200
    second = r.json()["data"]["refresh_token"]
    assert second != first
    reuse = client.post("/v1/user/refresh_token", data={"refresh_token": first})
    assert reuse.status_code == 401 and "already used" in reuse.json()["error_description"]
    # the reuse revoked the whole family: the newer token no longer works either
    assert client.post("/v1/user/refresh_token", data={"refresh_token": second}).status_code == 401
    # a fresh login works
    assert client.post("/v1/user/login", headers=basic("alice")).status_code == 200


def test_login_is_throttled_per_user_then_per_address(tmp_path, tiny_models):
    settings = make_settings(tmp_path, login_failures_per_user=3, login_failures_per_address=5)
    with TestClient(create_app(settings, start_worker=False)) as c:
        c.app.state.services.accounts.create_user("bob", PASSWORD)
        for _ in range(3):
            assert c.post("/v1/user/login", headers=basic("bob", "wrong pass")).status_code == 401
        r = c.post("/v1/user/login", headers=basic("bob"))  # even the right password waits now
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
        assert r.json()["errors"] == ["rate_limited"]
        for name in ("x1", "x2"):  # failures on other names from the same address count too
            c.post("/v1/user/login", headers=basic(name, "wrong pass"))
        r = c.post("/v1/user/login", headers=basic("someone-else", "whatever pw"))
        assert r.status_code == 429 and "your address" in r.json()["error_description"]


def test_requests_per_minute(tmp_path, tiny_models):
    with TestClient(create_app(make_settings(tmp_path, requests_per_minute=5), start_worker=False)) as c:
        svc = c.app.state.services
        key = svc.accounts.create_api_key(svc.accounts.create_user("eve", PASSWORD))
        h = {"Authorization": f"Bearer {key}"}
        codes = [c.get("/v1/user/me", headers=h).status_code for _ in range(7)]
        assert codes[:5] == [200] * 5 and codes[5:] == [429, 429]
        r = c.get("/v1/user/me", headers=h)
        assert 1 <= int(r.headers["Retry-After"]) <= 60 and r.json()["errors"] == ["rate_limited"]


def test_task_caps_per_user_and_global_queue(tmp_path, tiny_models):
    settings = make_settings(tmp_path, max_active_tasks_per_user=2, max_queued_audio_seconds_per_user=10,
                             max_queue=3)
    with TestClient(create_app(settings, start_worker=False)) as c:  # no worker: tasks stay PENDING
        svc = c.app.state.services
        h1 = {"Authorization": f"Bearer {svc.accounts.create_api_key(svc.accounts.create_user('u1', PASSWORD))}"}
        h2 = {"Authorization": f"Bearer {svc.accounts.create_api_key(svc.accounts.create_user('u2', PASSWORD))}"}
        assert _create(c, h1, 6).status_code == 201
        r = _create(c, h1, 5)  # 6 + 5 > 10 seconds queued
        assert r.status_code == 429 and r.json()["errors"] == ["too_much_audio_queued"] and "Retry-After" in r.headers
        assert _create(c, h1, 1).status_code == 201
        r = _create(c, h1, 1)  # a third unfinished task
        assert r.status_code == 429 and r.json()["errors"] == ["too_many_tasks"]
        assert _create(c, h2, 1).status_code == 201  # the queue now holds 3
        r = _create(c, h2, 1)
        assert r.status_code == 503 and r.json()["errors"] == ["queue_full"] and "Retry-After" in r.headers
        assert svc.store.count() == 3  # refused requests left nothing behind


def test_other_users_events_and_files_are_hidden(client, user):
    task_id = _create(client, user["headers"]).json()["data"]["task_id"]
    result = wait_for(client, task_id, user["headers"])
    svc = client.app_services
    mallory = svc.accounts.create_api_key(svc.accounts.create_user("mallory", PASSWORD))
    mh = {"Authorization": f"Bearer {mallory}"}
    for path in (f"/v1/ai/audio_generation/{task_id}", f"/v1/ai/audio_generation/{task_id}/events"):
        assert client.get(path, headers=mh).status_code == 404
    assert client.post(f"/v1/ai/audio_generation/{task_id}/cancel", headers=mh).status_code == 404
    # a download link names its own task only: another id with the same signature is refused
    url = result["url_download"].split("/v1/", 1)[1]
    assert client.get("/v1/" + url.replace(task_id, "f" * 32)).status_code == 403


@pytest.mark.parametrize("path", ["/v1/files/..%2F..%2Fsecret.wav", "/v1/files/%2E%2E%2Fsoundry.db.wav",
                                  "/v1/files/..%2Fsecret", "/static/..%2F..%2Fconfig.py", "/static/../../secret"])
def test_no_path_reaches_outside_the_data_directory(client, path):
    r = client.get(path + ("&" if "?" in path else "?") + "expires=9999999999&sig=x")
    assert r.status_code in (403, 404)
    assert client.app_services.settings.secret.encode() not in r.content


def test_metrics_and_readiness(client, user):
    task_id = _create(client, user["headers"], 1.0).json()["data"]["task_id"]
    wait_for(client, task_id, user["headers"])
    for _ in range(100):
        if client.get("/readyz").status_code == 200:
            break
        time.sleep(0.1)
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["data"]["default_model"] == "loaded"
    text = client.get("/metrics").text
    assert 'soundry_tasks{status="COMPLETED"} 1.0' in text
    assert "soundry_http_request_duration_seconds_bucket" in text
    assert 'soundry_engine_batch_size_count{model="audiogen-medium"}' in text
    assert "soundry_generation_seconds_per_audio_second" in text and "soundry_queue_depth" in text


def test_readyz_reports_an_unavailable_default_model(tmp_path, monkeypatch):
    monkeypatch.setenv("SOUNDRY_MODEL_PATHS", f"audiogen={tmp_path / 'missing'}")
    with TestClient(create_app(make_settings(tmp_path))) as c:
        for _ in range(100):
            r = c.get("/readyz")
            if r.status_code == 200:
                break
            time.sleep(0.1)
        assert r.status_code == 200 and r.json()["data"]["default_model"].startswith("unavailable")

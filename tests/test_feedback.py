"""POST /v1/ai/feedback: the owner rates a finished task; stored, shown in results and history,
counted in /metrics; driven over plain HTTP and by FlexStack's unmodified ``parrotai`` client."""

from __future__ import annotations

import datetime as dt

import pytest

from soundry.tasks.models import Task, utcnow
from tests.conftest import PASSWORD, basic, wait_for

CREATE = {"prompt": "door slam", "configs": {"model": "audiogen", "duration": 0.5, "seed": 1}}


def _finished_task(client, headers) -> str:
    task_id = client.post("/v1/ai/audio_generation", json=CREATE, headers=headers).json()["data"]["task_id"]
    assert wait_for(client, task_id, headers)["status"] == "COMPLETED"
    return task_id


def test_rating_is_stored_shown_and_counted(client, user):
    headers = user["headers"]
    task_id = _finished_task(client, headers)
    r = client.post("/v1/ai/feedback", json={"task_id": task_id, "rating": 4.5, "feedback": "crisp"}, headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success"
    assert body["data"]["task_id"] == task_id and body["data"]["rating"] == 4.5 and body["data"]["feedback"] == "crisp"

    shown = client.get(f"/v1/ai/audio_generation/{task_id}", headers=headers).json()["data"]["data"]["feedback"]
    assert shown["rating"] == 4.5 and shown["feedback"] == "crisp" and shown["rated_at"]
    history = client.get("/v1/user/history", headers=headers).json()["data"]["tasks"]
    assert next(t for t in history if t["task_id"] == task_id)["feedback"]["rating"] == 4.5

    # a second rating replaces the first
    client.post("/v1/ai/feedback", json={"task_id": task_id, "rating": 2, "feedback": ""}, headers=headers)
    shown = client.get(f"/v1/ai/audio_generation/{task_id}", headers=headers).json()["data"]["data"]["feedback"]
    assert shown == {**shown, "rating": 2.0, "feedback": ""}

    metrics = client.get("/metrics").text
    assert 'soundry_task_rating_bucket{le="1"} 0.0' in metrics
    assert 'soundry_task_rating_bucket{le="2"} 1.0' in metrics
    assert "soundry_task_rating_count 1.0" in metrics and "soundry_task_rating_sum 2.0" in metrics


def test_unrated_task_shows_null(client, user):
    task_id = _finished_task(client, user["headers"])
    result = client.get(f"/v1/ai/audio_generation/{task_id}", headers=user["headers"]).json()["data"]["data"]
    assert result["feedback"] is None


@pytest.mark.parametrize("body, field", [
    ({"rating": 4, "feedback": ""}, "task_id"),
    ({"task_id": "x", "rating": 0, "feedback": ""}, "rating"),
    ({"task_id": "x", "rating": 5.5, "feedback": ""}, "rating"),
    ({"task_id": "x", "rating": "5", "feedback": ""}, "rating"),
    ({"task_id": "x", "rating": True, "feedback": ""}, "rating"),
    ({"task_id": "x", "rating": 3, "feedback": "x" * 2001}, "feedback"),
    ({"task_id": "x", "rating": 3, "stars": 3}, "stars"),
])
def test_bad_feedback_is_refused_naming_the_field(client, user, body, field):
    r = client.post("/v1/ai/feedback", json=body, headers=user["headers"])
    assert r.status_code == 422, r.text
    assert r.json()["errors"] == ["invalid_request"] and field in r.json()["error_description"]


def test_other_users_unknown_and_unfinished_tasks(client, user):
    task_id = _finished_task(client, user["headers"])
    client.app_services.accounts.create_user("mallory", PASSWORD)
    token = client.post("/v1/user/login", headers=basic("mallory")).json()["data"]["access_token"]
    other = {"Authorization": f"Bearer {token}"}
    r = client.post("/v1/ai/feedback", json={"task_id": task_id, "rating": 1, "feedback": "bad"}, headers=other)
    assert r.status_code == 404 and r.json()["errors"] == ["not_found"]
    r = client.post("/v1/ai/feedback", json={"task_id": "f" * 32, "rating": 1}, headers=user["headers"])
    assert r.status_code == 404
    shown = client.get(f"/v1/ai/audio_generation/{task_id}", headers=user["headers"]).json()["data"]["data"]
    assert shown["feedback"] is None  # mallory's attempt changed nothing

    svc = client.app_services
    alice = svc.accounts.get_user("alice")
    running = svc.store.create(Task(user_id=alice.id, prompt="x", config=dict(CREATE["configs"]), model="audiogen",
                                    status="PROCESSING", worker="elsewhere",  # held by a live worker elsewhere
                                    lease_until=utcnow() + dt.timedelta(hours=1)))
    r = client.post("/v1/ai/feedback", json={"task_id": running.id, "rating": 3}, headers=user["headers"])
    assert r.status_code == 409 and "PROCESSING" in r.json()["error_description"]
    assert client.post("/v1/ai/feedback", json={"task_id": task_id, "rating": 3}).status_code == 401


def test_parrotai_submit_feedback(live_server):
    """FlexStack's own client, unmodified: login, create, poll, rate."""
    import time

    from parrotai import ParrotAPI

    api = ParrotAPI(api_endpoint=live_server.url + "/v1")
    api.login(live_server.username, live_server.password)
    task_id = api.create_txt2audio("rain on a window", model="audiogen", duration=0.5)["data"]["task_id"]
    deadline = time.time() + 60
    while api.result_txt2audio(task_id)["data"]["data"]["status"] != "COMPLETED":
        assert time.time() < deadline
        time.sleep(0.1)
    answer = api.submit_feedback(task_id, 5, "exactly what I wanted")
    assert answer["status"] == "success" and answer["data"]["rating"] == 5.0
    result = api.result_txt2audio(task_id)["data"]["data"]
    assert result["feedback"]["feedback"] == "exactly what I wanted"
    assert api.submit_feedback(task_id, 9, "")["errors"] == ["invalid_request"]

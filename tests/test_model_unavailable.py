"""A model whose weights cannot be found fails its tasks with a reason that says what to do."""

from tests.conftest import wait_for


def test_task_fails_with_clear_reason(client, user, monkeypatch):
    monkeypatch.setenv("SOUNDRY_MODEL_PATHS", "")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    body = {"prompt": "thunder", "configs": {"model": "musicgen-large", "duration": 1}}
    task_id = client.post("/v1/ai/audio_generation", json=body, headers=user["headers"]).json()["data"]["task_id"]
    result = wait_for(client, task_id, user["headers"])
    assert result["status"] == "FAILED"
    assert "musicgen-large" in result["error_description"]
    assert "SOUNDRY_MODEL_PATHS" in result["error_description"]
    assert result["url_download"] is None

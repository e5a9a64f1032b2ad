"""Fixtures: a service on embedded defaults with the tiny reference models."""

from __future__ import annotations

import base64
import os
import time

import pytest
from fastapi.testclient import TestClient

from soundry.api.app import create_app
from soundry.config import Settings
from tests.helpers_models import TINY

PASSWORD = "correct horse battery"

# Compiling the decode step takes minutes of CPU; tests serve eagerly unless they ask for it
# (tests/test_compiled_steps.py). Subprocesses started by tests inherit this.
os.environ.setdefault("SOUNDRY_COMPILE", "false")


@pytest.fixture
def tiny_models(monkeypatch):
    monkeypatch.setenv("SOUNDRY_MODEL_PATHS", f"audiogen={TINY['audiogen']},musicgen={TINY['musicgen']},"
                                              f"musicgen-stereo={TINY['musicgen-stereo']},"
                                              f"musicgen-melody={TINY['musicgen-melody']},"
                                              f"musicgen-stereo-melody={TINY['musicgen-stereo-melody']}")


def make_settings(tmp_path, **kw) -> Settings:
    return Settings.load(config_file=str(tmp_path / "none.toml"), data_dir=str(tmp_path / "data"), max_batch=8, **kw)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """Every test that uses the service runs against SQLite and against PostgreSQL."""
    from tests.databases import database

    with database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def settings(tmp_path, tiny_models, database_url):
    return make_settings(tmp_path, database_url=database_url)


@pytest.fixture
def client(settings):
    app = create_app(settings)
    with TestClient(app) as c:
        c.app_services = app.state.services
        yield c


def basic(username: str, password: str = PASSWORD) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


@pytest.fixture
def user(client):
    client.app_services.accounts.create_user("alice", PASSWORD, email="alice@example.com")
    tokens = client.post("/v1/user/login", headers=basic("alice")).json()["data"]
    return {"username": "alice", "headers": {"Authorization": f"Bearer {tokens['access_token']}"}, **tokens}


def wait_for(client, task_id: str, headers: dict, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        data = client.get(f"/v1/ai/audio_generation/{task_id}", headers=headers).json()["data"]["data"]
        if data["status"] in ("COMPLETED", "FAILED", "CANCELED"):
            return data
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} did not finish in {timeout}s")


@pytest.fixture(scope="module")
def module_live_server(tmp_path_factory):
    """One live server (tiny models, SQLite) for a whole test module: each test's own would load the
    models again."""
    from tests.helpers_models import TINY
    from tests.live_server import start_live_server

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOUNDRY_MODEL_PATHS", f"audiogen={TINY['audiogen']},musicgen={TINY['musicgen']}")
        live = start_live_server(make_settings(tmp_path_factory.mktemp("server")))
        yield live
        live.stop()


@pytest.fixture
def live_server(tmp_path, tiny_models):
    """A real HTTP server with the tiny models and a user (``.username``/``.password``/``.api_key``)."""
    from tests.live_server import start_live_server

    server = start_live_server(make_settings(tmp_path, webhook_backoff=0.2))  # SQLite (API suite covers PostgreSQL)
    yield server
    server.stop()

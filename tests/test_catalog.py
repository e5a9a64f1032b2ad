"""The catalog is data, read live: a model added with ``soundry models add`` while the server runs is listed,
validated, documented (OpenAPI's enum, Replicate's schema) and taken by every API without a restart, with the
facts read from its checkpoint when it was added — also where the checkpoint's files are not (an API process
of a distributed deployment)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from soundry.api.app import create_app
from soundry.models.catalog import RECORDS, Catalog, read_records, write_records
from tests.conftest import PASSWORD, make_settings
from tests.helpers_models import DATA, TINY

STEREO_MELODY = DATA / "musicgen-stereo-melody-tiny"


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("SOUNDRY_MODEL_PATHS", f"audiogen={TINY['audiogen']},musicgen={TINY['musicgen']}")
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings, start_worker=False)) as c:
        svc = c.app.state.services
        c.settings, c.svc = settings, svc
        c.headers = {"Authorization": "Bearer " + svc.accounts.create_api_key(svc.accounts.create_user("ann",
                                                                                                        PASSWORD))}
        yield c


def _add(data_dir, name, source) -> None:
    """``soundry models add`` as an operator runs it: another process, beside the running server."""
    done = subprocess.run([sys.executable, "-m", "soundry.cli.main", "--data-dir", str(data_dir), "models", "add",
                           name, str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def _names(c) -> list[str]:
    return [m["model"] for m in c.get("/v1/models/audio_generation").json()["data"]]


def test_a_model_added_while_the_server_runs_is_served_everywhere_without_a_restart(server, tmp_path):
    c = server
    source = tmp_path / "tune-model"
    shutil.copytree(STEREO_MELODY, source)
    assert "mytune" not in _names(c)
    assert "mytune" not in c.get("/openapi.json").json()["components"]["schemas"]["Configs"]["properties"][
        "model"]["enum"]
    _add(c.settings.data_dir, "mytune", source)

    entry = next(m["metadata"] for m in c.get("/v1/models/audio_generation").json()["data"] if m["model"] == "mytune")
    assert entry["channels"] == 2 and entry["melody"] and entry["family"] == "musicgen"
    assert entry["source"] == str(source) and entry["sample_rate"] == 32000
    assert "mytune" in [m["model"] for m in c.get("/v1/ai/models").json()["data"]["models"]]
    enum = c.get("/openapi.json").json()["components"]["schemas"]["Configs"]["properties"]["model"]["enum"]
    assert "mytune" in enum
    version = c.get("/v1/models/soundry/mytune/versions", headers=c.headers)
    assert version.status_code == 200, version.text
    assert "melody" in version.json()["results"][0]["openapi_schema"]["components"]["schemas"]["Input"]["properties"]
    # validation takes it (and a melody for it); nothing runs here, the task waits
    r = c.post("/v1/ai/audio_generation", headers=c.headers,
               json={"prompt": "a tune", "configs": {"model": "mytune", "duration": 1}})
    assert r.status_code == 201, r.text
    assert c.svc.store.get(r.json()["data"]["task_id"]).model == "mytune"


def test_facts_are_recorded_when_added_and_read_from_the_record_not_guessed(server, tmp_path):
    c = server
    source = tmp_path / "tune-model"
    shutil.copytree(STEREO_MELODY, source)
    _add(c.settings.data_dir, "mytune", source)
    record = json.loads((c.settings.data_dir / RECORDS).read_text())["models"]["mytune"]
    assert record["channels"] == 2 and record["melody"] is True
    shutil.rmtree(source)  # an API process of a distributed deployment: the weights live on the workers
    spec = Catalog(c.settings.data_dir).get("mytune")
    assert spec.channels == 2 and spec.melody
    up = c.post("/v1/ai/audio_generation", headers=c.headers,
                json={"prompt": "a tune", "configs": {"model": "mytune", "duration": 1, "decoder": "mbd"}})
    assert up.status_code == 201, up.text  # a MusicGen: MultiBand Diffusion applies


def test_a_record_written_before_facts_were_recorded_gets_them_once(tmp_path):
    from soundry.models.catalog import AddedModel
    from soundry.models.sources.added import open_catalog

    source = tmp_path / "tune-model"
    shutil.copytree(STEREO_MELODY, source)
    data = tmp_path / "data"
    write_records(data, {"old": AddedModel("old", str(source))})  # as soundry wrote it before: no facts
    assert read_records(data)["old"].channels is None
    catalog = open_catalog(data, [])
    assert catalog.get("old").channels == 2 and catalog.get("old").melody
    assert read_records(data)["old"].channels == 2  # written back: later starts read the record


def test_a_removed_model_is_gone_from_the_list(server, tmp_path):
    c = server
    source = tmp_path / "plain-model"
    shutil.copytree(TINY["musicgen"], source)
    _add(c.settings.data_dir, "plain", source)
    assert "plain" in _names(c)
    done = subprocess.run([sys.executable, "-m", "soundry.cli.main", "--data-dir", str(c.settings.data_dir),
                           "models", "remove", "plain"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "plain" not in _names(c)
    r = c.post("/v1/ai/audio_generation", headers=c.headers,
               json={"prompt": "x", "configs": {"model": "plain", "duration": 1}})
    assert r.status_code == 422 and "configs.model" in r.json()["error_description"]

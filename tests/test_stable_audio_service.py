"""The diffusion family through the service (issue 29): the catalog's capabilities in the model list, what a
Stable Audio model does not take refused naming the field, its defaults applied, and concurrent seeded requests
of different lengths, batched step by step by the engine, each equal to its result alone."""

from __future__ import annotations

import io
import time
from functools import cache

import numpy as np
import pytest
import soundfile as sf
import torch
from fastapi.testclient import TestClient

from soundry.api.app import create_app
from soundry.engine.generate import generate
from tests.conftest import PASSWORD, make_settings
from tests.helpers_models import DATA, TINY

SA3, SAO = DATA / "stable-audio-3-tiny", DATA / "stable-audio-open-tiny"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOUNDRY_MODEL_PATHS", f"audiogen={TINY['audiogen']},stable-audio-3-small-sfx={SA3},"
                                         f"stable-audio-open={SAO}")
        settings = make_settings(tmp_path_factory.mktemp("stable-audio"), preload=["stable-audio-3-small-sfx"])
        with TestClient(create_app(settings)) as c:
            svc = c.app.state.services
            c.svc = svc
            c.headers = {"Authorization": "Bearer " + svc.accounts.create_api_key(
                svc.accounts.create_user("ann", PASSWORD))}
            yield c


@cache
def alone(folder, prompt: str, duration: float, seed: int, guidance: float, steps: int) -> np.ndarray:
    from soundry.models import load_model

    out = generate(load_model(str(folder), device="cpu"), [prompt], duration=duration, seed=seed, cfg_coef=guidance,
                   steps=steps)
    return out.audio[0].numpy()


def _create(c, model: str, prompt: str, **configs):
    return c.post("/v1/ai/audio_generation", headers=c.headers,
                  json={"prompt": prompt, "configs": {"model": model, "normalization": "none", **configs}})


def _finish(c, task_id: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        data = c.get(f"/v1/ai/audio_generation/{task_id}", headers=c.headers).json()["data"]["data"]
        if data["status"] in ("COMPLETED", "FAILED", "CANCELED"):
            return data
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} did not finish")


def test_the_model_list_says_what_a_diffusion_model_is(server):
    server.svc.engines.get("stable-audio-3-small-sfx")  # loaded (the preload may still be running)
    entries = {m["model"]: m["metadata"] for m in server.get("/v1/models/audio_generation").json()["data"]}
    sa3 = entries["stable-audio-3-small-sfx"]
    assert sa3["kind"] == "diffusion" and sa3["default_steps"] == 8 and sa3["default_guidance"] == 1.0
    assert sa3["streams_live"] is False and sa3["license"] == "Stability AI Community License"
    assert sa3["sample_rate"] == 44100 and sa3["channels"] == 2 and sa3["context_seconds"] == 120.0
    assert sa3["loaded"] is True and sa3["precision"] == "fp32"  # the precision setting's auto, on the CPU
    assert entries["audiogen"]["kind"] == "autoregressive" and entries["audiogen"]["streams_live"] is True


@pytest.mark.parametrize("model,configs,field", [
    ("stable-audio-3-small-sfx", {"top_k": 50}, "configs.top_k"),
    ("stable-audio-3-small-sfx", {"top_p": 0.5}, "configs.top_p"),
    ("stable-audio-3-small-sfx", {"temperature": 0.7}, "configs.temperature"),
    ("stable-audio-3-small-sfx", {"decoder": "mbd"}, "configs.decoder"),
    ("stable-audio-3-small-sfx", {"duration": 200}, "configs.duration"),
    ("stable-audio-open", {"duration": 50}, "configs.duration"),
    ("audiogen", {"steps": 8}, "configs.steps"),
])
def test_what_a_family_does_not_take_is_refused_naming_it(server, model, configs, field):
    before = server.svc.store.count()
    r = _create(server, model, "rain", **{"duration": 0.5, **configs})
    assert r.status_code == 422 and r.json()["error_description"].startswith(field), r.text
    assert server.svc.store.count() == before


def test_a_negative_prompt_without_guidance_is_refused_not_ignored(server):
    r = server.post("/v1/ai/audio_generation", headers=server.headers, json={
        "prompt": "rain", "negative_prompt": "wind", "configs": {"model": "stable-audio-3-small-sfx", "duration": 0.5}})
    assert r.status_code == 422 and r.json()["error_description"].startswith("negative_prompt"), r.text
    r = server.post("/v1/ai/audio_generation", headers=server.headers, json={
        "prompt": "rain", "negative_prompt": "wind",
        "configs": {"model": "stable-audio-3-small-sfx", "duration": 0.5, "cfg_coef": 3.0, "steps": 4}})
    assert r.status_code == 201, r.text
    assert _finish(server, r.json()["data"]["task_id"])["status"] == "COMPLETED"


def test_concurrent_seeded_requests_of_different_lengths_each_equal_their_result_alone(server):
    """Three requests of three lengths, one guided, submitted together: the engine batches their denoising
    steps; each stored file (16-bit WAV) is its request's audio alone, to the WAV's rounding."""
    asks = [("rain on a tin roof", 0.5, 11, 1.0, 6), ("a door slams", 0.25, 12, 3.0, 8), ("thunder", 0.4, 13, 1.0, 4)]
    ids = []
    for prompt, duration, seed, guidance, steps in asks:
        r = _create(server, "stable-audio-3-small-sfx", prompt, duration=duration, seed=seed, cfg_coef=guidance,
                    steps=steps, output_format="wav")
        assert r.status_code == 201, r.text
        ids.append(r.json()["data"]["task_id"])
    for task_id, (prompt, duration, seed, guidance, steps) in zip(ids, asks, strict=True):
        done = _finish(server, task_id)
        assert done["status"] == "COMPLETED", done
        got, rate = sf.read(io.BytesIO(server.get(done["url_download"]).content), dtype="float32", always_2d=True)
        expected = alone(SA3, prompt, duration, seed, guidance, steps)
        assert rate == 8000 and got.T.shape == expected.shape  # the tiny model's own rate
        np.testing.assert_allclose(got.T, expected, atol=2e-4)  # 16-bit PCM: 3e-5 a step, plus batching's 1e-5
    engine = server.svc.engines.loaded()["stable-audio-3-small-sfx"]
    assert engine.stats.max_batch_size >= 2  # they did share steps
    metrics = server.get("/metrics").text  # the family's steps and audio are counted like the first family's
    steps = next(line for line in metrics.splitlines()
                 if line.startswith('soundry_engine_steps_total{model="stable-audio-3-small-sfx"}'))
    assert float(steps.split()[-1]) >= 8
    assert 'soundry_engine_batch_size_count{model="stable-audio-3-small-sfx"}' in metrics


def test_defaults_of_the_model_are_applied_and_recorded(server):
    r = _create(server, "stable-audio-3-small-sfx", "wind", duration=0.3, seed=5)
    assert r.status_code == 201, r.text
    config = r.json()["data"]["config"]
    assert config["steps"] == 8 and config["cfg_coef"] == 1.0  # the catalog's, recorded with the task
    # what the model does not read is not recorded as its settings (history, webhooks and predictions show these)
    assert not {"top_k", "top_p", "temperature", "decoder", "melody", "input_audio"} & set(config), config
    done = _finish(server, r.json()["data"]["task_id"])
    assert done["status"] == "COMPLETED" and done["decoder"] == "autoencoder"
    assert not {"top_k", "top_p", "temperature"} & set(done["config"])
    got, _ = sf.read(io.BytesIO(server.get(done["url_download"]).content), dtype="float32", always_2d=True)
    assert torch.isfinite(torch.from_numpy(got)).all()


def test_the_cli_generates_with_a_stable_audio_folder_and_says_what_it_does_not_take(tmp_path, capsys):
    from soundry.cli.main import main

    out = tmp_path / "rain.wav"
    args = ["generate", "rain on a tin roof", "-o", str(out), "--model-path", str(SA3), "--duration", "0.5",
            "--steps", "4", "--seed", "3", "--normalization", "none", "--device", "cpu"]
    assert main(args) == 0, capsys.readouterr().err
    audio, rate = sf.read(out, dtype="float32", always_2d=True)
    assert rate == 8000 and audio.shape[1] == 2
    np.testing.assert_allclose(audio.T, alone(SA3, "rain on a tin roof", 0.5, 3, 1.0, 4), atol=2e-4)
    assert main([*args, "--top-k", "5"]) == 2
    assert "--top-k" in capsys.readouterr().err
    assert main(["generate", "rain", "-o", str(tmp_path / "a.wav"), "--model-path", str(TINY["audiogen"]),
                 "--steps", "4", "--device", "cpu"]) == 2
    assert "--steps" in capsys.readouterr().err


def test_replicate_documents_and_runs_a_stable_audio_model_with_only_its_inputs(server):
    """Replicate's API: soundry/<Stable Audio model>'s version schema lists what the model reads (steps, its own
    guidance default, its longest clip; no top_k), a prediction runs as its task alone would, and an input the
    model does not read is refused naming it as the schema does."""
    model = "soundry/stable-audio-3-small-sfx"
    version = server.get(f"/v1/models/{model}/versions", headers=server.headers).json()["results"][0]
    schema = version["openapi_schema"]["components"]["schemas"]["Input"]["properties"]
    assert schema["steps"]["default"] == 8 and schema["cfg_coef"]["default"] == 1.0
    assert schema["duration"]["maximum"] == 120.0
    assert not {"top_k", "top_p", "temperature", "input_audio", "melody", "decoder", "model"} & set(schema)

    r = server.post(f"/v1/models/{model}/predictions", headers={**server.headers, "Prefer": "wait=60"},
                    json={"input": {"prompt": "rain on a tin roof", "duration": 0.5, "steps": 4, "seed": 21,
                                    "normalization": "none"}})
    assert r.status_code in (200, 201) and r.json()["status"] == "succeeded", r.text
    task = _finish(server, r.json()["id"])
    got, _ = sf.read(io.BytesIO(server.get(task["url_download"]).content), dtype="float32", always_2d=True)
    np.testing.assert_allclose(got.T, alone(SA3, "rain on a tin roof", 0.5, 21, 1.0, 4), atol=2e-4)

    for inputs, field in (({"top_k": 5}, "top_k"), ({"cfg_coef": 30.0}, "cfg_coef"), ({"duration": 200}, "duration")):
        r = server.post(f"/v1/models/{model}/predictions", headers=server.headers,
                        json={"input": {"prompt": "rain", **inputs}})
        assert r.status_code == 422 and field in r.json()["detail"], r.text


def test_the_client_and_the_remote_cli_generate_with_a_stable_audio_model(tmp_path, monkeypatch, capsys):
    """``Client.generate(model=..., steps=...)`` and ``soundry generate --url ... --model ... --steps`` against a
    live server: each clip is its request's audio alone; a sampling option the model does not read is refused by
    the server naming it."""
    from soundry.cli.main import main
    from soundry.client import Client
    from tests.live_server import start_live_server

    monkeypatch.setenv("SOUNDRY_MODEL_PATHS", f"audiogen={TINY['audiogen']},stable-audio-3-small-sfx={SA3}")
    live = start_live_server(make_settings(tmp_path / "live"))
    try:
        client = Client(live.url, api_key=live.api_key)
        audio = client.generate("a door slams", model="stable-audio-3-small-sfx", duration=0.25, steps=4, seed=8,
                                normalization="none")
        got, _ = sf.read(io.BytesIO(audio.data), dtype="float32", always_2d=True)
        np.testing.assert_allclose(got.T, alone(SA3, "a door slams", 0.25, 8, 1.0, 4), atol=2e-4)

        out = tmp_path / "rain.wav"
        base = ["generate", "rain on a tin roof", "-o", str(out), "--url", live.url, "--api-key", live.api_key,
                "--model", "stable-audio-3-small-sfx", "--duration", "0.5", "--normalization", "none"]
        assert main([*base, "--steps", "4", "--seed", "3"]) == 0, capsys.readouterr().err
        got, _ = sf.read(out, dtype="float32", always_2d=True)
        np.testing.assert_allclose(got.T, alone(SA3, "rain on a tin roof", 0.5, 3, 1.0, 4), atol=2e-4)
        assert main([*base, "--top-k", "5"]) != 0
        assert "top_k" in capsys.readouterr().err
    finally:
        live.stop()

"""MultiBand Diffusion through the FlexStack API (issue 22): ``configs.decoder: mbd`` on a tiny MusicGen (the tiny
MBD of tests/data/musicgen-stereo-tiny/mbd, made for that model's codec, through the ``mbd_path`` setting), the
refusal for AudioGen, the model list, and the sentences a task fails with when the weights cannot be had. One app
(tiny models, SQLite) serves the whole module."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from soundry.api.app import create_app
from soundry.tasks import engines as engines_module
from soundry.tasks.engines import ModelUnavailable, mbd_weights
from tests.conftest import PASSWORD, basic, make_settings, wait_for
from tests.helpers_models import TINY

MBD = TINY["musicgen-stereo"] / "mbd"


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOUNDRY_MODEL_PATHS", ",".join(f"{k}={v}" for k, v in TINY.items()))
        mp.setenv("SOUNDRY_MBD_PATH", str(MBD))  # the setting, as an operator sets it
        app = create_app(make_settings(tmp_path_factory.mktemp("mbd")))
        with TestClient(app) as c:
            c.svc = app.state.services
            c.svc.accounts.create_user("alice", PASSWORD)
            token = c.post("/v1/user/login", headers=basic("alice")).json()["data"]["access_token"]
            c.headers = {"Authorization": f"Bearer {token}"}
            yield c


def create(api, **configs):
    return api.post("/v1/ai/audio_generation", headers=api.headers, json={"prompt": "a drum loop", "configs": configs})


def run(api, **configs) -> dict:
    r = create(api, **configs)
    assert r.status_code == 201, r.text
    return wait_for(api, r.json()["data"]["task_id"], api.headers)


def audio_of(api, result: dict) -> np.ndarray:
    r = api.get(result["url_download"].replace("http://testserver", ""))
    assert r.status_code == 200
    return sf.read(io.BytesIO(r.content), always_2d=True)[0]


def test_decoder_mbd_stores_the_diffusion_decode(api):
    assert api.svc.settings.mbd_path == str(MBD)
    seeded = {"model": "musicgen-stereo", "duration": 0.2, "top_k": 50, "seed": 11, "normalization": "none"}
    encodec = run(api, **seeded)
    mbd = run(api, **seeded, decoder="mbd")
    assert encodec["status"] == mbd["status"] == "COMPLETED", mbd
    assert (encodec["decoder"], mbd["decoder"]) == ("encodec", "mbd")
    assert mbd["config"]["decoder"] == "mbd" and mbd["seed"] == 11
    a, b = audio_of(api, encodec), audio_of(api, mbd)
    assert a.shape == b.shape == (6400, 2) and np.abs(b).max() > 0
    assert not np.allclose(a, b, atol=1e-3)  # the same tokens, another decoder
    assert np.array_equal(audio_of(api, run(api, **seeded, decoder="mbd")), b)  # seeded: the diffusion repeats


def test_mbd_for_audiogen_is_refused_naming_the_field(api):
    before = api.svc.store.count()
    r = create(api, model="audiogen", duration=0.5, decoder="mbd")
    assert r.status_code == 422 and r.json()["error_description"].startswith("configs.decoder: audiogen is not")
    assert create(api, model="musicgen", decoder="diffusion").status_code == 422
    assert api.svc.store.count() == before


def test_the_model_list_says_which_decoders_a_model_takes(api):
    entries = {m["model"]: m["metadata"] for m in api.get("/v1/models/audio_generation").json()["data"]}
    assert entries["musicgen-stereo-melody"]["decoders"] == entries["musicgen"]["decoders"] == ["encodec", "mbd"]
    assert entries["audiogen"]["decoders"] == ["encodec"]


def test_weights_that_cannot_be_had_fail_the_task_with_a_sentence(api, tmp_path):
    engines = api.svc.engines
    engines.mbd_path = str(tmp_path / "nowhere")
    try:
        result = run(api, model="musicgen", duration=0.3, decoder="mbd")
    finally:
        engines.mbd_path = str(MBD)
        engines._mbd_failures.clear()  # the failure is remembered for retry_after; the next test starts clean
    assert result["status"] == "FAILED"
    assert result["error_description"].startswith("MultiBand Diffusion: the mbd_path setting names ")


def test_without_the_setting_the_hub_is_asked_and_an_unreachable_one_names_the_setting(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("not in the cache") if kwargs.get(
            "local_files_only") else ConnectionError("no network in the tests")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(ModelUnavailable, match=r"hub is unreachable \(ConnectionError\); set mbd_path "
                                               r"\(SOUNDRY_MBD_PATH\)"):
        mbd_weights("")
    assert engines_module.MBD_REPO == "facebook/multiband-diffusion"
    assert mbd_weights(str(MBD)) == mbd_weights(str(MBD / "mbd_musicgen_32khz.th")) == MBD / "mbd_musicgen_32khz.th"


def test_a_task_canceled_while_diffusing_stops_after_the_current_pass(api, monkeypatch):
    """A MultiBand Diffusion decode takes minutes of CPU: a cancel stops it within one U-Net pass, the task stays
    CANCELED and no file is stored."""
    from soundry.models.audiocraft.codecs.mbd import MultiBandDiffusion

    original, passes, task = MultiBandDiffusion.tokens_to_wav, [], {}

    def cancel_at_first_pass(self, tokens, seed, step_list=None, details=None, progress=None):
        def on_pass(done, total):
            passes.append((done, total))
            if done == 1:
                assert api.svc.store.cancel(task["id"])  # what the cancel route does to the record
            progress(done, total)
        return original(self, tokens, seed, step_list, details, on_pass)

    monkeypatch.setattr(MultiBandDiffusion, "tokens_to_wav", cancel_at_first_pass)
    r = create(api, model="musicgen-stereo", duration=0.2, seed=3, decoder="mbd")
    assert r.status_code == 201, r.text
    task["id"] = r.json()["data"]["task_id"]
    result = wait_for(api, task["id"], api.headers)
    assert result["status"] == "CANCELED"
    assert passes and passes[-1][0] == 1 < passes[-1][1]  # stopped after the first of the 80 passes
    assert api.svc.store.get(task["id"]).file_key == ""

"""Precision is a setting: each one loads and generates with the tiny models; what a loaded model
runs in is reported by the model list and /metrics; a precision that cannot run fails at load with a
sentence naming it."""

from __future__ import annotations

import time

import pytest
import torch
from fastapi.testclient import TestClient

from soundry.config import Settings
from soundry.engine import Engine, GenerationRequest
from soundry.models import load_model
from soundry.models.audiocraft.lm.precision import (
    PrecisionError,
    check_precision,
    describe_lm_precision,
    resolve_precision,
)
from tests.conftest import make_settings
from tests.helpers_models import TINY
from tests.helpers_teacher import teacher_logits


@pytest.mark.parametrize("kind", ["audiogen", "musicgen"])
@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16", "fp16", "int8"])
def test_each_precision_loads_and_generates(kind, precision):
    model = load_model(str(TINY[kind]), device="cpu", precision=precision)
    expected = "fp32" if precision == "auto" else precision
    assert model.precision == expected
    assert describe_lm_precision(model.lm) == expected
    engine = Engine(model, max_batch=2).start()
    try:
        futures = [engine.submit(GenerationRequest("dog barking", 0.3, seed=s)) for s in (1, 2)]
        results = [f.result(timeout=120) for f in futures]
    finally:
        engine.stop()
    for r in results:
        assert r.tokens.shape == (model.cfg.n_q, 15)
        assert int(r.tokens.min()) >= 0 and int(r.tokens.max()) < model.cfg.card
        assert r.audio.dtype == torch.float32 and torch.isfinite(r.audio).all()


def test_int8_changes_the_lm_but_stays_close_to_fp32():
    """Not a fidelity measurement (bench/fidelity.py is): the int8 LM is a different computation
    whose teacher-forced logits still track fp32's."""
    codes = torch.randint(0, 16, (1, 4, 12))
    fp32 = load_model(str(TINY["audiogen"]), device="cpu", precision="fp32")
    int8 = load_model(str(TINY["audiogen"]), device="cpu", precision="int8")
    a, mask = teacher_logits(fp32, codes, ["rain"])
    b, _ = teacher_logits(int8, codes, ["rain"])
    a, b = a[mask], b[mask]
    assert not torch.equal(a, b)
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.99


def test_unknown_precision_is_refused_by_name(tmp_path, monkeypatch):
    with pytest.raises(PrecisionError, match="unknown precision 'fp8'"):
        load_model(str(TINY["audiogen"]), device="cpu", precision="fp8")
    monkeypatch.setenv("SOUNDRY_PRECISION", "half")
    with pytest.raises(ValueError, match="setting precision: 'half' is not one of auto, fp32, bf16, fp16, int8"):
        Settings.load(config_file=str(tmp_path / "none.toml"), data_dir=str(tmp_path))


def test_precision_comes_from_flag_env_and_toml(tmp_path, monkeypatch):
    toml = tmp_path / "soundry.toml"
    toml.write_text('[soundry]\nprecision = "bf16"\ncompile = false\n')
    s = Settings.load(config_file=str(toml), finalize=False)
    assert (s.precision, s.compile) == ("bf16", False)
    monkeypatch.setenv("SOUNDRY_PRECISION", "INT8")
    assert Settings.load(config_file=str(toml), finalize=False).precision == "int8"
    assert Settings.load(config_file=str(toml), finalize=False, precision="fp16").precision == "fp16"
    assert Settings.load(config_file=str(toml), data_dir=str(tmp_path / "d")).compile_cache == \
        (tmp_path / "d" / "compile-cache").resolve()


def test_auto_and_gpu_only_rules():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision(None, "cuda") == "bf16"
    assert resolve_precision("auto", "cuda") == "bf16"
    with pytest.raises(PrecisionError, match="int8 runs on the CPU only"):
        resolve_precision("int8", "cuda")


def test_a_precision_the_device_cannot_run_fails_at_load_with_its_name(monkeypatch):
    """E.g. an op with no float16 kernel on this CPU: the load fails, naming the precision, instead
    of every request failing later."""
    from soundry.models.audiocraft.lm.transformer import TransformerLM

    def no_kernel(self, *args, **kwargs):
        raise RuntimeError('"addmm_impl_cpu_" not implemented for \'Half\'')

    monkeypatch.setattr(TransformerLM, "forward_cached", no_kernel)
    with pytest.raises(PrecisionError, match="precision fp16 does not run on cpu here: .*not implemented for 'Half'"):
        load_model(str(TINY["musicgen"]), device="cpu", precision="fp16")


def test_check_precision_refuses_non_finite_logits():
    model = load_model(str(TINY["musicgen"]), device="cpu", precision="fp16")
    with torch.no_grad():
        model.lm.out_norm.weight.fill_(float("inf"))
    with pytest.raises(PrecisionError, match="non-finite logits"):
        check_precision(model.lm, "fp16", "cpu")


def test_model_list_and_metrics_say_which_precision_a_loaded_model_runs_in(tmp_path, tiny_models):
    settings = make_settings(tmp_path, precision="int8")
    from soundry.api.app import create_app

    app = create_app(settings)
    with TestClient(app) as client:
        engines = app.state.services.engines
        deadline = time.monotonic() + 120
        while "audiogen-medium" not in engines.loaded() and time.monotonic() < deadline:
            time.sleep(0.2)
        models = {m["model"]: m["metadata"] for m in client.get("/v1/models/audio_generation").json()["data"]}
        assert models["audiogen"]["loaded"] and models["audiogen"]["precision"] == "int8"
        assert models["audiogen"]["compiled"] == "off" and models["audiogen"]["weights"] == "int8"
        assert models["musicgen"] == {**models["musicgen"], "loaded": False, "precision": None, "compiled": None,
                                      "weights": None}
        metrics = client.get("/metrics").text
        assert ('soundry_engine_info{compiled="off",model="audiogen-medium",precision="int8",weights="int8"} 1.0'
                in metrics)

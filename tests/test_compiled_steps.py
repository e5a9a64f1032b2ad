"""The compiled CPU decode step (torch.compile, one graph per batch bucket, built in the background
while the engine serves eagerly) samples exactly the tokens of the eager step. This is the one test
that compiles (about a minute of CPU); the rest of the suite serves eagerly."""

from __future__ import annotations

import time

import pytest
import torch

from soundry.engine import Engine, GenerationRequest
from soundry.models import load_model
from tests.helpers_models import TINY

REQUESTS = [dict(prompt="wind through pine trees", seed=11, duration=0.5),
            dict(prompt="a door slams", seed=12, duration=0.8, top_k=3),
            dict(prompt="glass breaking", seed=13, duration=0.3, top_k=0, top_p=0.7, temperature=0.8)]


def generate(engine: Engine) -> list[torch.Tensor]:
    return [engine.submit(GenerationRequest(**r)).result(timeout=300).tokens for r in REQUESTS]


@pytest.mark.slow
def test_compiled_step_gives_the_eager_tokens_and_persists_its_cache(tmp_path):
    model = load_model(str(TINY["musicgen"]), device="cpu", packed=False)  # as compile = true loads it
    eager = Engine(model, max_batch=1).start()
    try:
        expected = generate(eager)
    finally:
        eager.stop()

    cache_dir = tmp_path / "compile-cache"
    engine = Engine(model, max_batch=1, compile=True, compile_cache=cache_dir).start()
    try:
        deadline = time.monotonic() + 60
        while (engine._batch is None or engine._batch.static is None) and time.monotonic() < deadline:
            time.sleep(0.05)
        steps = engine._batch.static
        assert engine.compile_state in ("compiling", "on")
        assert steps.wait(timeout=600), "compilation did not finish in 10 minutes"
        assert engine.compile_state == "on", steps.error
        assert sorted(steps.compile_seconds) == [1]
        got = generate(engine)
        assert steps.steps_compiled == sum(t.shape[-1] + max(model.cfg.delays) for t in got)
    finally:
        engine.stop()
    # tokens exactly equal: no tie tolerance is needed for these requests
    for e, g in zip(expected, got, strict=True):
        assert torch.equal(e, g)
    assert any(cache_dir.rglob("*")), "inductor wrote nothing to the configured cache directory"

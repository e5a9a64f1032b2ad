"""The compiled CPU decode step (torch.compile: a graph for one request and one for two or more,
built in the background while the engine serves eagerly) samples exactly the tokens of the eager
step. These are the tests that compile (about a minute of CPU); the rest of the suite serves eagerly."""

from __future__ import annotations

import time

import pytest
import torch
from torch._dynamo.utils import counters

from soundry.engine import Engine, GenerationRequest
from soundry.engine.generate import generate
from soundry.models import load_model
from tests.helpers_models import TINY, tiny_model

REQUESTS = [dict(prompt="wind through pine trees", seed=11, duration=0.5),
            dict(prompt="a door slams", seed=12, duration=0.8, top_k=3),
            dict(prompt="glass breaking", seed=13, duration=0.3, top_k=0, top_p=0.7, temperature=0.8)]


def generate_together(engine: Engine) -> list[torch.Tensor]:
    """Submit every request at once: the batch runs 3, then 2, then 1 of them (they end at different
    steps), so both graphs and the eager fallback (top_k = 0) all serve."""
    futures = [engine.submit(GenerationRequest(**r)) for r in REQUESTS]
    return [f.result(timeout=300).tokens for f in futures]


@pytest.mark.slow
def test_compiled_step_gives_the_eager_tokens_and_persists_its_cache(tmp_path):
    model = tiny_model("musicgen")  # packed weights, as the service loads them
    eager = Engine(model, max_batch=1).start()
    try:  # one at a time, eagerly: what every request must get whatever shares its batch
        expected = [eager.submit(GenerationRequest(**r)).result(timeout=300).tokens for r in REQUESTS]
    finally:
        eager.stop()

    cache_dir = tmp_path / "compile-cache"
    engine = Engine(model, max_batch=4, compile=True, compile_cache=cache_dir).start()
    try:
        deadline = time.monotonic() + 60
        while (engine._batch is None or engine._batch.static is None) and time.monotonic() < deadline:
            time.sleep(0.05)
        steps = engine._batch.static
        assert engine.compile_state in ("compiling", "on")
        assert steps.wait(timeout=600), "compilation did not finish in 10 minutes"
        assert engine.compile_state == "on", steps.error
        assert sorted(steps.compile_seconds) == [1, 2]  # one request; two or more
        got = generate_together(engine)
        # the top_k = 0 request (the shortest) runs its steps eagerly, and so does the batch with it
        assert 0 < steps.steps_compiled < max(t.shape[-1] for t in got) + max(model.cfg.delays)
    finally:
        engine.stop()
    # tokens exactly equal: no tie tolerance is needed for these requests
    for e, g in zip(expected, got, strict=True):
        assert torch.equal(e, g)
    assert any(cache_dir.rglob("*")), "inductor wrote nothing to the configured cache directory"


@pytest.mark.slow
def test_generate_compiled_matches_eager_and_reuses_its_graphs(tmp_path):
    model = load_model(str(TINY["audiogen"]), device="cpu")
    prompts = ["rain on a tin roof", "a dog barking"]

    def same_tokens(batch: list[str], duration: float) -> bool:
        eager = generate(model, batch, duration, seed=5)
        compiled = generate(model, batch, duration, seed=5, compile=True, compile_cache=tmp_path)
        return torch.equal(eager.tokens, compiled.tokens)

    assert same_tokens(prompts, 1.0) and same_tokens(prompts[:1], 0.6)  # compiles 2+, then 1
    graphs = counters["stats"]["unique_graphs"]
    assert same_tokens(prompts * 2, 1.4) and same_tokens(prompts[1:], 1.2)  # other sizes and lengths
    assert counters["stats"]["unique_graphs"] == graphs, "another batch size or length compiled again"


@pytest.mark.slow
def test_compiled_step_runs_in_bf16(tmp_path):
    model = load_model(str(TINY["musicgen"]), device="cpu", precision="bf16")
    prompts = ["rain on a tin roof", "a dog barking"]
    graphs = counters["stats"]["unique_graphs"]
    out = generate(model, prompts, 1.0, top_k=1, seed=5, compile=True, compile_cache=tmp_path)
    assert counters["stats"]["unique_graphs"] > graphs  # bf16 weights are other constants: their own graph
    eager = generate(model, prompts, 1.0, top_k=1, seed=5)
    # Fused kernels round bf16 differently, so the greedy tokens may part from the eager bf16 step's
    # after a while (bench/fidelity.py measures how far both stray from fp32); they stay valid codes.
    assert out.tokens.shape == eager.tokens.shape
    assert 0 <= int(out.tokens.min()) and int(out.tokens.max()) < model.cfg.card
    assert torch.isfinite(out.audio).all() and out.audio.abs().max() > 0


@pytest.mark.slow
def test_compiled_step_on_a_melody_model_gives_the_eager_tokens():
    """A melody model's rows sit at their prefix length plus their step (the offsets are batch state the graph
    reads): a melody request and a text-only one, with prefixes of different lengths, decode compiled as eagerly."""
    from tests.helpers_models import melody_reference

    model, ref = tiny_model("musicgen-melody"), melody_reference("musicgen-melody")
    tune = ref["melody_wav"][0][..., : ref["melody_sample_rate"]]

    def requests():
        return [GenerationRequest("calm piano with strings", 0.6, top_k=50, seed=5, melody=tune,
                                  melody_sample_rate=ref["melody_sample_rate"]),
                GenerationRequest("drums", 0.4, top_k=50, seed=6)]

    def run(**kw) -> tuple[list[torch.Tensor], int]:
        engine = Engine(model, max_batch=4, **kw).start()
        try:
            if kw.get("compile"):
                deadline = time.monotonic() + 60
                while (engine._batch is None or engine._batch.static is None) and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert engine._batch.static.wait(timeout=600) and engine.compile_state == "on"
            futures = [engine.submit(r) for r in requests()]
            return [f.result(timeout=300).tokens for f in futures], getattr(engine._batch.static, "steps_compiled", 0)
        finally:
            engine.stop()

    eager, _ = run()
    compiled, steps = run(compile=True)
    assert steps > 0
    for e, c in zip(eager, compiled, strict=True):
        assert torch.equal(e, c)


def test_only_onednn_linears_need_frozen_graphs():
    """Frozen graphs bypass inductor's on-disk graph cache (every process compiles again); the row kernel takes its
    weight as an input, so its graphs are not frozen and a restart loads them."""
    from soundry.engine.compiled_steps import freezes
    from soundry.models import load_model
    from soundry.models.audiocraft.lm import rows_kernel
    from tests.helpers_models import TINY

    onednn = load_model(str(TINY["audiogen"]), device="cpu", packed="onednn")
    assert freezes(onednn.lm)
    if rows_kernel.available():
        assert not freezes(load_model(str(TINY["audiogen"]), device="cpu").lm)

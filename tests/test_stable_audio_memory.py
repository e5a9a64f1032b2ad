"""The memory budget counts the diffusion family (soundry.engine.memory.fit_diffusion_batch): a request's two DiT rows
at the longest clip and its sampler state, once the decode of the longest clip; a stated reserve; the claims of
other engines in the process (either family); a sentence naming the sizes when one request does not fit. Stand-in
numbers for the GPU (torch.cuda.mem_get_info), as tests/test_gpu_path_ii.py does for the LM's KV cache."""

import threading

import pytest
import torch

from soundry.engine import memory
from soundry.engine.diffusion.engine import DiffusionEngine
from soundry.engine.memory import (
    DIFFUSION_RESERVE,
    DiffusionMemoryTooLarge,
    GiB,
    MemoryBudgetTooSmall,
    claim,
    claimed,
    fit_diffusion_batch,
    release,
)
from soundry.engine.request import GenerationRequest
from tests.test_stable_audio_parity import model

MiB = 1 << 20


@pytest.fixture
def gpu(monkeypatch):
    """A stand-in GPU whose free memory the test sets."""
    free = {"bytes": 40 * GiB}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 80 * GiB))
    return free


def test_max_batch_when_it_fits_else_what_the_budget_holds_after_the_decode_and_the_reserve(gpu):
    row, state, decode = 300 * MiB, 1 * MiB, 3 * GiB
    assert fit_diffusion_batch(row, state, decode, 16, "cuda:0", 0.9) == (16, 16 * (2 * row + state) + decode)
    gpu["bytes"] = 8 * GiB  # budget min(0.9 * 8, 8 - 2) = 6 GiB; 3 GiB after the decode; 601 MiB per request
    requests, budget = fit_diffusion_batch(row, state, decode, 16, "cuda:0", 0.9)
    assert requests == (6 * GiB - decode) // (2 * row + state) == 5
    assert budget == 5 * (2 * row + state) + decode
    # the fraction binds when it is the smaller
    assert fit_diffusion_batch(row, state, decode, 16, "cuda:0", 0.5)[0] == (4 * GiB - decode) // (2 * row + state)


def test_one_request_that_does_not_fit_is_refused_with_the_sizes(gpu):
    gpu["bytes"] = 5 * GiB + 512 * MiB
    with pytest.raises(DiffusionMemoryTooLarge) as err:
        fit_diffusion_batch(300 * MiB, 1 * MiB, 3 * GiB, 16, "cuda:0", 0.9, name="stable-audio-open")
    text = str(err.value)
    assert isinstance(err.value, MemoryBudgetTooSmall)
    for part in ("one request of stable-audio-open needs 0.59 GiB", "0.59 GiB for its two DiT rows",
                 "3.00 GiB for decoding the longest clip", "cuda:0 has 5.50 GiB free", "diffusion_memory=0.9",
                 "allows 3.50 GiB", f"keeping {DIFFUSION_RESERVE / GiB:.2f} GiB in reserve"):
        assert part in text, (part, text)


def test_a_second_model_in_the_process_counts_the_first_ones_claim_in_either_family(gpu):
    first, second = object(), object()
    row, state, decode = 300 * MiB, 0, 1 * GiB
    n1, budget1 = fit_diffusion_batch(row, state, decode, 16, "cuda:0", 1.0, owner=first)
    claim(first, "cuda:0", budget1)
    try:
        assert n1 == 16 and budget1 == 16 * 2 * row + decode
        assert claimed("cuda:0") == budget1 and claimed("cuda:0", exclude=first) == 0 and claimed("cuda:1") == 0
        # the second sees the first's budget as used: only what the reserve and the first left
        n2, _ = fit_diffusion_batch(row, state, decode, 64, "cuda:0", 1.0, owner=second)
        assert n2 == (40 * GiB - budget1 - DIFFUSION_RESERVE - decode) // (2 * row) == 45
        # the first one refitting does not count its own claim
        assert fit_diffusion_batch(row, state, decode, 64, "cuda:0", 1.0, owner=first)[0] == 63
        # an LM loaded later sizes its KV cache from what the claim leaves
        class LM:
            cfg = type("cfg", (), {"num_layers": 2, "dim": 64, "delays": [0], "cross_attention": False})()
            emb = [torch.nn.Embedding(1, 1)]

        per_slot = memory.kv_bytes_per_slot(LM(), 100, 0)
        gpu["bytes"] = budget1 + memory.RESERVE + 3 * per_slot
        assert memory.fit_slots(LM(), 64, 100, "cuda:0", 1.0, max_cond_len=0) == 3
    finally:
        release(first)
    assert claimed("cuda:0") == 0


def test_on_the_cpu_the_hosts_available_memory_is_budgeted_and_max_batch_caps_it(monkeypatch):
    monkeypatch.setattr(memory, "host_available", lambda: 2 * GiB)
    assert fit_diffusion_batch(100 * MiB, 0, 1 * GiB, 16, "cpu", 1.0)[0] == 5  # (2 - 1) GiB / 200 MiB
    assert fit_diffusion_batch(100 * MiB, 0, 1 * GiB, 16, "cpu", 0.75)[0] == 2  # (1.5 - 1) GiB / 200 MiB
    assert fit_diffusion_batch(1 * MiB, 0, 1 * GiB, 16, "cpu", 1.0)[0] == 16
    with pytest.raises(DiffusionMemoryTooLarge, match="the host \\(MemAvailable\\) has"):
        fit_diffusion_batch(1 * GiB, 0, 1 * GiB, 16, "cpu", 1.0)
    monkeypatch.setattr(memory, "host_available", lambda: None)  # nothing to budget from: max_batch
    assert fit_diffusion_batch(100 * GiB, 0, 0, 16, "cpu", 1.0)[0] == 16


@pytest.mark.parametrize("kind", ["sa3", "sao"])
def test_the_models_estimates_follow_its_shapes(kind):
    m = model(kind)
    longest = m.latent_length(m.max_duration)
    assert m.dit_row_bytes() == m.dit_row_bytes(longest) > m.dit_row_bytes(max(1, longest // 2)) > 0
    assert m.state_bytes() == 16 * 4 * m.latent_channels * longest
    # the decode estimate covers the largest activation of a real decode of the longest clip
    largest = m.largest_decode_activation(longest)
    assert largest <= m.decode_bytes() <= 8 * largest


def test_the_engine_serves_what_its_budget_holds_and_claims_it_while_it_runs(monkeypatch):
    m = model("sa3")
    per_request = 2 * m.dit_row_bytes() + m.state_bytes()
    monkeypatch.setattr(memory, "host_available", lambda: m.decode_bytes() + per_request + 1)
    engine = DiffusionEngine(m, max_batch=4, memory_fraction=1.0).start()
    try:
        # guided requests at the longest clip: one at a time, as budgeted
        futures = [engine.submit(GenerationRequest(p, m.max_duration, seed=s, steps=3, cfg_coef=3.0))
                   for p, s in (("rain", 1), ("wind", 2), ("a bell", 3))]
        assert all(f.result(timeout=120).audio.shape[-1] > 0 for f in futures)
        assert engine.batch_limit == 1 and engine.stats.max_batch_size == 1
        assert claimed("cpu") == m.decode_bytes() + per_request
        # short unguided ones, each a fraction of the worst case, share the same bytes (up to max_batch)
        short = 0.05
        need = m.dit_row_bytes(m.latent_length(short)) + m.state_bytes(m.latent_length(short))
        assert 3 * need <= per_request
        gate = threading.Event()
        futures = [engine.submit(GenerationRequest("rain", short, seed=1, steps=3, cfg_coef=1.0),
                                 lambda step, steps: gate.wait(60))]
        futures += [engine.submit(GenerationRequest(p, short, seed=s, steps=3, cfg_coef=1.0))
                    for p, s in (("wind", 2), ("a bell", 3))]
        gate.set()
        assert all(f.result(timeout=120).audio.shape[-1] > 0 for f in futures)
        assert engine.stats.max_batch_size >= 2
    finally:
        engine.stop()
    assert claimed("cpu") == 0


def test_an_engine_whose_one_request_does_not_fit_refuses_every_request_with_the_sentence(monkeypatch):
    m = model("sa3")
    monkeypatch.setattr(memory, "host_available", lambda: m.decode_bytes())
    engine = DiffusionEngine(m, max_batch=4)
    fut = engine.submit(GenerationRequest("rain", 0.05, seed=1, steps=2))
    with pytest.raises(DiffusionMemoryTooLarge, match=f"one request of {m.name} needs"):
        fut.result(timeout=60)
    with pytest.raises(DiffusionMemoryTooLarge, match="diffusion_memory=0.9"):
        engine.submit(GenerationRequest("wind", 0.05, seed=2, steps=2))
    engine.stop()
    assert claimed("cpu") == 0


def test_the_diffusion_memory_setting_is_checked_and_reaches_the_engines(monkeypatch, tmp_path):
    from soundry.config import Settings
    from soundry.tasks.engines import EngineManager

    with pytest.raises(ValueError, match="setting diffusion_memory: 1.5 is not a fraction in \\(0, 1\\]"):
        Settings(diffusion_memory=1.5).check()
    monkeypatch.setenv("SOUNDRY_DIFFUSION_MEMORY", "0.5")
    assert Settings.load(str(tmp_path / "none.toml"), finalize=False).diffusion_memory == 0.5
    manager = EngineManager(diffusion_memory=0.5, loader=lambda name: model("sa3"))
    engine = manager.get("stable-audio-3-tiny")
    try:
        assert isinstance(engine, DiffusionEngine) and engine.memory_fraction == 0.5
    finally:
        manager.stop()

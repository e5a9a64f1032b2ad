"""The diffusion engine batches denoising steps continuously: requests join a running batch at any step, each at
its own step of its own schedule with its own noise, and each seeded request's audio equals its result alone.

Tolerance: 1e-5 absolute (the audio peaks at 0.5). A row's sampler arithmetic is per row, so only the batched DiT
call can differ from batch 1, by float rounding (diffusers' own batched call: < 6e-7 on these folders).
"""

import threading

import pytest
import torch

from soundry.engine.diffusion.engine import DiffusionEngine
from soundry.engine.generate import generate
from soundry.engine.request import GenerationCanceled, GenerationRequest
from tests.test_stable_audio_parity import golden, model

TOL = 1e-5


def request(kind, i, **kw):
    g = golden(kind)
    return GenerationRequest(g["prompts"][i], duration=g["durations"][i], cfg_coef=g["guidance_scales"][i],
                             seed=g["seeds"][i], negative_prompt=g["negative_prompts"][i], steps=g["steps"][i], **kw)


def alone(kind, req):
    return generate(model(kind), [req.prompt], duration=req.duration, seed=req.seed, cfg_coef=req.cfg_coef,
                    steps=req.steps, negative_prompts=[req.negative_prompt]).audio[0]


def run_staggered(engine, first, later):
    """Submit ``first``; while it waits after its first step, submit ``later``: they join it mid-schedule."""
    gate, seen = threading.Event(), []

    def hold(step, steps):
        seen.append((step, steps))
        if step == 1:
            assert gate.wait(60)

    futures = [engine.submit(first, hold)]
    futures += [engine.submit(r) for r in later]
    gate.set()
    return [f.result(timeout=300) for f in futures], seen


@pytest.mark.parametrize("kind,first,later", [
    ("sa3", 4, [0, 2, 3, 1]),  # latent lengths 35 | 25, 17, 17, 25; guided (3, 2) and unguided; 4 to 8 steps
    ("sao", 3, [0, 2]),  # 10 steps unguided | 8 steps all-zero uncond, 6 steps with a negative prompt
])
def test_concurrent_requests_of_different_lengths_each_equal_their_alone_result(kind, first, later):
    engine = DiffusionEngine(model(kind), max_batch=8)
    try:
        reqs = [request(kind, i) for i in [first, *later]]
        results, seen = run_staggered(engine, reqs[0], reqs[1:])
    finally:
        engine.stop()
    assert seen == [(s, reqs[0].steps) for s in range(1, reqs[0].steps + 1)]  # progress by step, in order
    assert engine.stats.max_batch_size == len(reqs)  # all of them shared steps
    g = golden(kind)
    for req, case, res in zip(reqs, [first, *later], results, strict=True):
        want = alone(kind, req)
        assert res.audio.shape == want.shape == g["audio"][case].shape
        assert res.sample_rate == g["sample_rate"]
        assert (res.audio - want).abs().max() <= TOL, (case, float((res.audio - want).abs().max()))
        assert (res.audio - g["audio"][case]).abs().max() <= 1e-4 * g["audio"][case].abs().max()


def test_a_canceled_request_leaves_between_steps_and_the_others_are_unchanged():
    kind = "sa3"
    engine = DiffusionEngine(model(kind), max_batch=8)
    gate, reached, steps_seen = threading.Event(), threading.Event(), []
    victim = request(kind, 0)

    def hold(step, steps):
        steps_seen.append(step)
        if step == 2:
            reached.set()
            assert gate.wait(60)

    try:
        f_victim = engine.submit(victim, hold)
        f_other = engine.submit(request(kind, 4))
        assert reached.wait(60)
        assert engine.cancel(victim.id)
        gate.set()
        with pytest.raises(GenerationCanceled):
            f_victim.result(timeout=300)
        other = f_other.result(timeout=300)
    finally:
        engine.stop()
    assert engine.stats.canceled == 1 and engine.stats.completed == 1
    assert steps_seen == [1, 2]  # it took no step after the cancel
    assert (other.audio - alone(kind, request(kind, 4))).abs().max() <= TOL


def test_an_unseeded_request_gets_a_recorded_seed_that_reproduces_it():
    kind = "sa3"
    engine = DiffusionEngine(model(kind))
    req = request(kind, 1, id="unseeded")
    req.seed = None
    try:
        res = engine.submit(req).result(timeout=300)
    finally:
        engine.stop()
    assert req.seed is not None
    assert (res.audio - alone(kind, req)).abs().max() <= TOL


def test_what_the_model_cannot_take_is_refused_at_submit():
    engine = DiffusionEngine(model("sao"))
    with pytest.raises(ValueError, match="at most"):
        engine.submit(GenerationRequest("dog", duration=5.0, seed=0))
    with pytest.raises(ValueError, match="steps"):
        engine.submit(GenerationRequest("dog", duration=0.05, seed=0, steps=0))
    with pytest.raises(ValueError, match="text only"):
        engine.submit(GenerationRequest("dog", duration=0.05, seed=0, prompt_audio=torch.zeros(2, 10)))
    assert engine.queued == 0 and engine.active == 0


def test_a_request_is_encoded_on_the_submitting_thread_never_stalling_the_running_batch():
    """The text encoder runs in ``submit`` (the task runner's thread), not on the denoising loop: while the loop is
    held inside a running request's step, another request is encoded and queued; a request canceled while it waits
    leaves nothing behind, and each result is its result alone."""
    kind = "sa3"
    m = model(kind)
    engine = DiffusionEngine(m, max_batch=8)
    threads, original = [], m.encode_prompt
    gate, reached = threading.Event(), threading.Event()

    def encode(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return original(*args, **kwargs)

    def hold(step, steps):
        if step == 1:
            reached.set()
            assert gate.wait(60)

    m.encode_prompt = encode
    try:
        first = engine.submit(request(kind, 4), hold)
        assert reached.wait(60)  # the loop is inside the first request's step
        waiting, victim = request(kind, 1), request(kind, 2)
        f_waiting, f_victim = engine.submit(waiting), engine.submit(victim)  # encoded now, while the loop is held
        assert len(threads) == 3 and engine.queued == 2
        assert engine.cancel(victim.id) and victim.id not in engine._prepared
        gate.set()
        results = [first.result(timeout=300), f_waiting.result(timeout=300)]
        with pytest.raises(GenerationCanceled):
            f_victim.result(timeout=10)
    finally:
        engine.stop()
        del m.encode_prompt
    assert all(name != DiffusionEngine.thread_name for name in threads), threads
    assert engine._prepared == {}
    for got, req in zip(results, [request(kind, 4), request(kind, 1)], strict=True):
        assert (got.audio - alone(kind, req)).abs().max() <= TOL

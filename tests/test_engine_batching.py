"""Continuous batching: seeded requests give the same tokens alone or in company, and requests
that join or leave mid-run do not disturb the others."""

import pytest
import torch

from soundry.engine import Engine, GenerationCanceled, GenerationRequest
from soundry.engine.generate import generate
from soundry.engine.jobs import make_job
from tests.helpers_cuda_standins import cuda_graph_stand_ins
from tests.helpers_models import continuation, tiny_model


def req(prompt, seed, duration=0.6, **kw):
    return GenerationRequest(prompt=prompt, duration=duration, seed=seed, **kw)


# Tests of a request's tokens in a batch against its tokens alone use attention="per_request": with the default
# (masked) attention they agree only up to float rounding (~1e-6 of the logits: tests/test_gpu_path_ii.py).
EXACT = "per_request"


def run_alone(model, request, attention="masked"):
    engine = Engine(model, max_batch=1, attention=attention).start()
    try:
        return engine.submit(request).result(timeout=120).tokens
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def model():
    return tiny_model("audiogen")


MIXED = [
    req("dog barking in the distance", 1),
    req("rain falling on a tin roof", 2, duration=0.3, top_k=50, top_p=0.0, temperature=0.7),
    req("a crowd cheering", 3, duration=0.9, top_k=0, top_p=0.8, cfg_coef=1.5),
    req("", 4, top_k=250, top_p=0.95, temperature=1.3, negative_prompt="ocean waves"),
]


def test_batched_equals_one_at_a_time(model):
    alone = [run_alone(model, r, EXACT) for r in MIXED]
    engine = Engine(model, max_batch=8, attention=EXACT).start()
    try:
        futures = [engine.submit(GenerationRequest(**{**r.__dict__, "id": r.id + "b"})) for r in MIXED]
        batched = [f.result(timeout=120).tokens for f in futures]
        assert engine.stats.max_batch_size == len(MIXED)
    finally:
        engine.stop()
    for a, b in zip(alone, batched, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(alone[0][:, :10], alone[3][:, :10])


def test_seed_makes_a_request_reproducible_and_seeds_differ(model):
    a = run_alone(model, req("motorcycle engine revving", 11))
    b = run_alone(model, req("motorcycle engine revving", 11))
    c = run_alone(model, req("motorcycle engine revving", 12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_request_joining_and_leaving_mid_run(model):
    base = req("birds chirping in a forest", 21, duration=1.0)
    other = req("footsteps on gravel", 22, duration=0.8)
    victim = req("a baby laughing", 23, duration=1.0)
    expected_base, expected_other = run_alone(model, base, EXACT), run_alone(model, other, EXACT)

    engine = Engine(model, max_batch=4, attention=EXACT).start()
    futures = {}

    def on_progress(done, total):  # runs on the engine thread, between steps
        if done == 10:
            futures["other"] = engine.submit(GenerationRequest(**{**other.__dict__, "id": "late"}))
            futures["victim"] = engine.submit(victim)
        if done == 20:
            assert engine.cancel(victim.id)

    try:
        futures["base"] = engine.submit(GenerationRequest(**{**base.__dict__, "id": "base"}), on_progress)
        assert torch.equal(futures["base"].result(timeout=120).tokens, expected_base)
        assert torch.equal(futures["other"].result(timeout=120).tokens, expected_other)
        with pytest.raises(GenerationCanceled):
            futures["victim"].result(timeout=120)
        assert engine.stats.canceled == 1
        assert engine.stats.max_batch_size == 3
    finally:
        engine.stop()


def test_long_request_windows_inside_the_engine_match_generate(model):
    r = req("ocean waves crashing", 5, duration=3.0, top_k=1)
    model_max, model_stride = model.max_duration, model.extend_stride
    model.max_duration, model.extend_stride = 1.5, 0.5
    try:
        tokens = run_alone(model, r)
        ref = generate(model, [r.prompt], duration=3.0, top_k=1, seed=5).tokens[0]
    finally:
        model.max_duration, model.extend_stride = model_max, model_stride
    assert tokens.shape == (4, 150)
    assert torch.equal(tokens, ref)


def test_audio_has_the_requested_duration(model):
    engine = Engine(model, max_batch=2).start()
    try:
        res = engine.submit(req("thunder", 7, duration=0.75)).result(timeout=120)
    finally:
        engine.stop()
    assert res.sample_rate == model.sample_rate
    assert res.audio.shape == (1, int(0.75 * model.sample_rate))
    assert torch.isfinite(res.audio).all()


def test_long_prompt_grows_the_condition_cache(model):
    long_prompt = " ".join(["dog barking in the distance while cars pass by"] * 12)  # > 64 tokens
    short = req("rain", 8, duration=0.3)
    expected = run_alone(model, short, EXACT)
    engine = Engine(model, max_batch=4, attention=EXACT).start()
    try:
        first = engine.submit(GenerationRequest(**{**short.__dict__, "id": "short"}))
        second = engine.submit(req(long_prompt, 9, duration=0.3))
        assert torch.equal(first.result(timeout=120).tokens, expected)
        assert second.result(timeout=120).tokens.shape == (4, 15)
    finally:
        engine.stop()


def test_condition_cache_shrinks_when_the_long_prompt_leaves(model):
    """A long prompt widens every step's cross-attention only while its request is in the batch;
    when it leaves, the width (and the grown memory) go back to what the remaining requests need,
    and they decode exactly what they would alone."""
    from soundry.engine.batch import DecodeBatch

    long_prompt = " ".join(["dog barking in the distance while cars pass by"] * 12)  # > 64 tokens
    long, short = req(long_prompt, 9, duration=0.6), req("rain", 8, duration=0.3)
    expected = run_alone(model, req("rain", 8, duration=0.3), EXACT)
    batch = DecodeBatch(model.lm, max_slots=4, max_frames=model.max_frames())
    batch.attention = EXACT
    base_capacity = batch.cache.max_cond_len
    jobs = [make_job(model, r, c) for r, c in zip([long, short], model.conditions([long, short]), strict=True)]
    for job in jobs:
        batch.admit(job)
    long_len, short_len = (j.cond.shape[1] for j in jobs)
    assert batch.cache.cross_len == long_len > base_capacity > short_len
    for _ in range(3):
        batch.step()
    batch.remove(jobs[0])  # canceled mid-run; the short one moves into its slot
    assert jobs[1].slot == 0
    assert batch.cache.cross_len == short_len
    assert batch.cache.max_cond_len == base_capacity
    finished = []
    while not finished:
        finished = batch.step()
    assert finished == [jobs[1]] and torch.equal(DecodeBatch.tokens_of(jobs[1]), expected)


def test_unseeded_request_records_its_seed(model):
    r = req("wind", None, duration=0.2)
    tokens = run_alone(model, r)
    assert r.seed is not None
    assert torch.equal(run_alone(model, req("wind", r.seed, duration=0.2)), tokens)


@pytest.mark.parametrize("name", ["audiogen", "musicgen"])
def test_static_bucketed_steps_give_the_same_tokens(name):
    """The graph-capturable step (bucketed batch with padding slots, attention over a key-length bucket
    (tests/test_gpu_path_ii.py: across buckets), no host-side top-k bound) samples exactly what the dynamic
    step samples. On the CPU it runs eagerly; on a GPU the same function is captured in CUDA graphs."""
    m = tiny_model(name)
    requests = [req("wind through pine trees", 11, duration=0.5), req("a door slams", 12, duration=0.8, top_k=3),
                req("glass breaking", 13, duration=0.3, top_k=0, top_p=0.7, temperature=0.8)]
    results = {}
    for static in (False, True):
        engine = Engine(m, max_batch=8, static_steps=static).start()
        try:
            futures = [engine.submit(GenerationRequest(**{**r.__dict__, "id": f"{r.id}{static}"})) for r in requests]
            results[static] = [f.result(timeout=120).tokens for f in futures]
            assert (engine._batch.static is not None) == static
        finally:
            engine.stop()
    for dynamic, static in zip(results[False], results[True], strict=True):
        assert torch.equal(dynamic, static)


def test_stopping_answers_every_request(model):
    """A stopped engine fails what it was running and what was still waiting: nothing hangs."""
    engine = Engine(model, max_batch=1).start()
    running = engine.submit(req("a long hum", 21, duration=20))
    waiting = engine.submit(req("never admitted", 22, duration=1))
    engine.stop()
    for fut in (running, waiting):
        with pytest.raises(RuntimeError, match="engine stopped"):
            fut.result(timeout=30)
    assert engine.submit(req("after stop", 23, duration=0.2)).result(timeout=60).tokens.numel() > 0  # restarts
    engine.stop()


@pytest.mark.parametrize("kind", ["audiogen", "musicgen-stereo"])
def test_continuation_and_text_only_requests_share_a_batch(kind):
    """An audio-prompt continuation (prefilled on admission) and a text-only request decode in one
    batch; each gives exactly what it gives alone, and the continuation starts with its prompt."""
    model, c = tiny_model(kind), continuation(kind)
    codes = model.prompt_codes(c["prompt_wav"][0], c["prompt_sample_rate"])
    cont = req("dog barking", 11, duration=1.0, prompt_codes=codes, top_k=50)
    text = req("rain on a roof", 12, duration=1.0, top_k=50)
    alone = [run_alone(model, r, EXACT) for r in (cont, text)]
    engine = Engine(model, max_batch=4, attention=EXACT).start()
    try:
        futures = [engine.submit(r) for r in (text, cont)]
        together = [f.result(timeout=120).tokens for f in futures]
    finally:
        engine.stop()
    assert engine.stats.max_batch_size == 2
    assert torch.equal(together[1], alone[0]) and torch.equal(together[0], alone[1])
    assert torch.equal(together[1][:, : codes.shape[-1]], codes)
    assert together[1].shape[-1] == together[0].shape[-1] == 50


def test_graphs_never_replay_over_a_reallocated_condition_cache(model, monkeypatch):
    """A long prompt grows the condition cache and its leaving shrinks it back to the same length, in new
    tensors: the graphs captured on the old ones must not replay (wrong audio, no error), only the dynamic
    step until the batch is empty and they are captured again."""
    from soundry.engine.batch import DecodeBatch
    from soundry.engine.static_steps import StaticSteps

    cuda_graph_stand_ins(monkeypatch)

    long_prompt = " ".join(["dog barking in the distance while cars pass by"] * 12)  # > 64 tokens
    batch = DecodeBatch(model.lm, max_slots=2, max_frames=model.max_frames())
    batch.static = steps = StaticSteps(batch, use_graphs=True)
    steps.prepare()
    replays = lambda: sum(g.replays for g in steps.graphs.values())  # noqa: E731
    short, long = req("rain", 8, duration=0.6), req(long_prompt, 9, duration=0.6)
    jobs = [make_job(model, r, c) for r, c in zip([short, long], model.conditions([short, long]), strict=True)]
    batch.admit(jobs[0])
    batch.step()
    assert replays() == 1  # the captured graph serves while its tensors are the cache's
    batch.admit(jobs[1])  # grows the condition cache: new tensors
    batch.step()
    batch.remove(jobs[1])  # shrinks it back to the captured length, in new tensors again
    assert batch.cache.max_cond_len == batch.cache.base_cond_len
    batch.step()
    assert replays() == 1  # no replay over the freed tensors
    batch.remove(jobs[0])
    steps.prepare()  # the batch is empty: captured again, on the current tensors
    batch.admit(make_job(model, short, model.conditions([short])[0]))
    batch.step()
    assert replays() == 1  # (the new graphs' first replay)


def test_a_failed_capture_falls_back_to_the_dynamic_step_loudly(model, monkeypatch, caplog):
    """Capture that raises (another thread's work during a global-mode capture, say): the engine logs it
    and decodes with the dynamic step, the same tokens, instead of static steps without graphs."""
    from soundry.engine.static_steps import StaticSteps

    def broken(self):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(StaticSteps, "prepare", broken)
    request = req("dog barking in the distance", 1)
    expected = run_alone(model, request)
    engine = Engine(model, max_batch=2, static_steps=True).start()
    try:
        assert torch.equal(engine.submit(GenerationRequest(**{**request.__dict__, "id": "x"})).result(120).tokens,
                           expected)
        assert engine._batch.static is None
    finally:
        engine.stop()
    assert "dynamic step from now on" in caplog.text


def test_a_request_is_answered_when_the_codec_pool_refuses_work(model):
    """At interpreter exit the codec's thread pool refuses new work while the engine still runs: the finished
    request is decoded on the engine thread instead of hanging its caller (and the process's exit) forever."""
    engine = Engine(model, max_batch=2).start()
    try:
        engine.submit(req("warm up", 1, duration=0.1)).result(timeout=120)  # the loop (and its pool) are up

        def refuse(*args, **kwargs):
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

        engine._codec.submit = refuse
        result = engine.submit(req("dog barking in the distance", 2, duration=0.3)).result(timeout=120)
        assert result.audio.shape[-1] > 0
    finally:
        engine.stop()

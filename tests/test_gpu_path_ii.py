"""Issue 31 ("The GPU path II"), shown on the CPU: CUDA graph capture and replay are stood in for by
recording stand-ins (capture runs the step eagerly, so a warm-up that writes past the cache fails here
as it would assert on a device)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from soundry.engine import GenerationRequest
from soundry.engine.batch import DecodeBatch
from soundry.engine.jobs import make_job
from soundry.engine.static_steps import StaticSteps
from tests.helpers_cuda_standins import cuda_graph_stand_ins
from tests.helpers_models import tiny_model

LONG_PROMPT = " ".join(["dog barking in the distance while cars pass by"] * 12)  # > 64 tokens


@pytest.fixture
def graphs(monkeypatch):
    """torch.cuda's stream and graph calls replaced by CPU stand-ins (tests/helpers_cuda_standins.py)."""
    return cuda_graph_stand_ins(monkeypatch)


@pytest.fixture(scope="module")
def model():
    return tiny_model("audiogen")


def _finish(batch: DecodeBatch) -> None:
    while batch.jobs:
        batch.step()


@pytest.mark.parametrize("key_buckets", [None, (4, 8, 16)])
def test_recapture_after_a_full_window_job_and_a_long_prompt_stays_inside_the_cache(model, graphs, key_buckets):
    """Item 1: a full-window job leaves its slot at the cache's last position; a long prompt bumps the
    cache version; when the batch empties the graphs are captured again, and every bucket's warm-up
    advances the freed slots. They must start from a safe position, not index past the cache (with key
    buckets too: item 4)."""
    frames = 20  # a 0.4 s request fills the whole window
    batch = DecodeBatch(model.lm, max_slots=4, max_frames=frames)
    batch.static = steps = StaticSteps(batch, buckets=(1, 2, 4), use_graphs=True, key_buckets=key_buckets)
    steps.prepare()
    full, long = GenerationRequest("rain", 0.4, seed=1), GenerationRequest(LONG_PROMPT, 0.2, seed=2)
    for r, c in zip([full, long], model.conditions([full, long]), strict=True):
        batch.admit(make_job(model, r, c))
    assert batch.jobs[0].current.length == frames and batch.cache.version != steps.captured_version
    _finish(batch)
    steps.prepare()  # the batch is empty: captured again (its warm-ups write K/V for every bucket)
    assert steps.captured_version == batch.cache.version
    assert int((batch.steps + batch.offsets).max()) < batch.cache.max_len


@pytest.mark.parametrize("key_buckets", [None, (2, 4)])
def test_while_graphs_are_stale_steps_run_the_dynamic_step_not_the_eager_static_one(model, graphs, monkeypatch,
                                                                                     key_buckets):
    """Item 2: after a long prompt reallocates the condition cache the graphs are stale until the batch
    empties; meanwhile a step attends over the keys the jobs need (the dynamic step), not a key bucket
    (item 4) nor the whole cache."""
    batch = DecodeBatch(model.lm, max_slots=4, max_frames=model.max_frames())
    batch.static = steps = StaticSteps(batch, buckets=(1, 2, 4), use_graphs=True, key_buckets=key_buckets)
    steps.prepare()
    key_lens = []
    real_decode = DecodeBatch.decode
    monkeypatch.setattr(DecodeBatch, "decode", lambda self, n, u, key_len, *a, **kw:
                        key_lens.append(key_len) or real_decode(self, n, u, key_len, *a, **kw))
    short, long = GenerationRequest("rain", 0.6, seed=1), GenerationRequest(LONG_PROMPT, 0.6, seed=2)
    for r, c in zip([short, long], model.conditions([short, long]), strict=True):
        batch.admit(make_job(model, r, c))
    assert steps.captured_version != batch.cache.version  # the long prompt grew the condition cache
    for _ in range(3):
        batch.step()
    assert key_lens == [1, 2, 3] and (steps.replays, steps.dynamic_steps) == (0, 3)


def test_a_long_prompt_does_not_make_a_model_without_cross_attention_recapture():
    """Item 2: a melody model prepends its text; its condition cache is never read by a step, so growing it
    must not change the version the graphs are keyed on."""
    melody = tiny_model("musicgen-melody")
    assert not melody.cfg.cross_attention
    batch = DecodeBatch(melody.lm, max_slots=2, max_frames=50, max_prefix=melody.max_prefix)
    version = batch.cache.version
    r = GenerationRequest(LONG_PROMPT, 0.2, seed=3)
    batch.admit(make_job(melody, r, melody.conditions([r])[0]))
    assert batch.cache.max_cond_len > 64 and batch.cache.version == version


def test_a_condition_cache_allocated_for_the_longest_text_is_never_reallocated(model):
    """Item 2: sized at max_text_tokens once (the engine does so on a GPU), a long prompt coming and
    going leaves the tensors the graphs captured in place."""
    batch = DecodeBatch(model.lm, max_slots=2, max_frames=50, max_cond_len=model.conditioner.max_tokens)
    version, ck = batch.cache.version, batch.cache.ck[0]
    r = GenerationRequest(LONG_PROMPT, 0.1, seed=4)
    batch.admit(make_job(model, r, model.conditions([r])[0]))
    assert batch.cache.cross_len > 64
    _finish(batch)
    assert batch.cache.version == version and batch.cache.ck[0] is ck and batch.cache.cross_len == 1


def test_on_cuda_a_steps_time_is_its_events_elapsed_time_once_it_has_run(monkeypatch):
    """Item 6: the engine thread only enqueues a step on a GPU; its time is read from CUDA events recorded
    around it, once the end event has completed (``query``, no sync), not from the host's clock."""
    from soundry.engine.step_timer import StepTimer

    clock = {"now": 0.0, "done": 0.0}  # device time: now, and how far the device has run

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.at = None

        def record(self, stream=None):
            self.at = clock["now"]

        def query(self):
            return self.at <= clock["done"]

        def elapsed_time(self, end):
            assert end.query()
            return (end.at - self.at) * 1000

    monkeypatch.setattr(torch.cuda, "Event", Event)
    timer = StepTimer("cuda")
    seconds = []
    for _ in range(3):  # three steps of 0.25 s each, enqueued while the device has run none of them
        started = timer.start()
        clock["now"] += 0.25
        seconds.append(timer.stop(started))
    assert seconds == [0, 0, 0]
    clock["done"] = 0.5  # the first two have run
    started = timer.start()
    clock["now"] += 0.25
    assert timer.stop(started) == 0.5
    clock["done"] = 1.0
    assert timer.stop(timer.start()) == 0.5  # the last two, and an empty step


@pytest.mark.parametrize("kind", ["audiogen", "musicgen-melody"])
def test_the_kv_budget_of_a_slot_is_what_the_cache_allocates_at_its_worst(kind):
    """Item 5: a slot's budget is the bytes the batch allocates for it with the condition cache at the
    longest text (what the engine allocates on a GPU), a prefix at its longest, and no cross-attention
    cache for a model that has none."""
    from soundry.engine.memory import kv_bytes_per_slot

    m = tiny_model(kind)
    tokens, frames = m.conditioner.max_tokens, 40
    batch = DecodeBatch(m.lm, max_slots=3, max_frames=frames, max_prefix=m.max_prefix, max_cond_len=tokens)
    allocated = sum(t.numel() * t.element_size() for t in batch.cache.tensors())
    assert kv_bytes_per_slot(m.lm, frames, max_cond_len=tokens, max_prefix=m.max_prefix) * 3 == allocated
    assert kv_bytes_per_slot(m.lm, frames, max_prefix=m.max_prefix) * 3 == allocated  # 256 is the default


def test_the_kv_budget_keeps_a_stated_reserve_and_names_the_sizes_when_one_slot_does_not_fit(model, monkeypatch):
    """Item 5: the budget is the smaller of kv_cache_memory × free memory and free memory less the reserve,
    and the refusal names the self- and cross-attention sizes and the reserve."""
    from soundry.engine.memory import RESERVE, GiB, KVCacheTooLarge, fit_slots, kv_bytes_per_slot

    lm, frames = model.lm, 500
    per_slot = kv_bytes_per_slot(lm, frames, max_cond_len=256)
    free = {"bytes": 100 * per_slot}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 2 * free["bytes"]))
    assert fit_slots(lm, 64, frames, "cuda", 0.9, reserve=50 * per_slot) == 50  # the reserve binds
    assert fit_slots(lm, 64, frames, "cuda", 0.4, reserve=50 * per_slot) == 40  # the fraction binds
    assert fit_slots(lm, 64, frames, "cuda", 0.9, reserve=0, max_cond_len=64) == 64  # a 64-token budget: optimistic
    assert fit_slots(lm, 64, frames, "cuda", 0.6, reserve=0) == 60
    free["bytes"] = RESERVE + per_slot - 1
    with pytest.raises(KVCacheTooLarge) as refused:
        fit_slots(lm, 4, frames, "cuda", 1.0, name="audiogen")
    own = (frames + max(lm.cfg.delays) + 1) * 2 * 2 * lm.cfg.num_layers * lm.cfg.dim * 4
    assert (f"needs {per_slot / GiB:.2f} GiB ({own / GiB:.2f} GiB of self-attention over 504 positions, "
            f"{(per_slot - own) / GiB:.2f} GiB of cross-attention over 256 text tokens)") in str(refused.value)
    assert f"keeping {RESERVE / GiB:.2f} GiB for the codec" in str(refused.value)


def test_multiband_diffusion_reads_nothing_back_and_copies_its_noise_without_blocking():
    """Item 3: the reverse process's schedule is Python floats computed on the host (``if sigma2 > 0`` on a
    CUDA scalar was a sync every U-Net pass) and each pass's noise goes to the device pinned and non-blocking."""
    from soundry.models.audiocraft.codecs.mbd import load_mbd
    from soundry.models.loader import load_model
    from tests.test_engine_host_syncs import HostCopies

    data = "tests/data/musicgen-stereo-tiny"
    mbd = load_mbd(f"{data}/mbd", load_model(data).codec)
    for band in mbd.bands:
        band.host_betas._soundry_host = True  # made at load, outside the recorder: a CPU tensor
    tokens = torch.load(f"{data}/mbd/mbd.pt", weights_only=True)["tokens"][:1, :, :10]
    calls: list[str] = []
    with HostCopies(calls):
        wav = mbd.tokens_to_wav(tokens, seed=7, step_list=[999, 499, 0])
    assert wav.shape[-1] > 0
    assert calls == [], sorted(set(calls))


def test_work_on_a_side_stream_waits_for_the_caller_and_is_waited_for_alone(monkeypatch):
    """Item 3: an audio prompt's encoding (and MultiBand Diffusion's decode) run on a stream of their own, after
    the caller's queued work; the caller waits for that stream only, and marks the result used by its stream."""
    from soundry.models.audiocraft.codecs.mbd import _on_side_stream
    from soundry.models.transfer import on_side_stream

    events = []

    class Stream:
        def __init__(self, device=None, name="side"):
            self.device, self.name = device, name

        def wait_stream(self, other):
            events.append(("wait", self.name, other.name))

        def synchronize(self):
            events.append(("synchronize", self.name))

    @contextlib.contextmanager
    def stream(s):
        events.append(("enter", s.name))
        yield
        events.append(("exit", s.name))

    class Out:
        device = torch.device("cuda", 0)

        def record_stream(self, s):
            events.append(("record_stream", s.name))

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream(device, "caller"))
    monkeypatch.setattr(torch.cuda, "stream", stream)
    out = on_side_stream(torch.device("cuda", 0), lambda: events.append(("work",)) or Out())
    assert isinstance(out, Out)
    assert events == [("wait", "side", "caller"), ("enter", "side"), ("work",), ("exit", "side"),
                      ("synchronize", "side"), ("record_stream", "caller")]

    class Decoder:
        _stream = None

        def _codec_device(self):
            return torch.device("cuda", 0)

        @_on_side_stream
        def decode(self, x):
            events.append(("decode", x))
            return x

    events.clear()
    decoder = Decoder()
    assert decoder.decode(1) == 1 and decoder.decode(2) == 2
    side = decoder._stream
    assert events == [("wait", "side", "caller"), ("enter", "side"), ("decode", 1), ("exit", "side"),
                      ("wait", "side", "caller"), ("enter", "side"), ("decode", 2), ("exit", "side")]
    assert decoder._stream is side  # one stream per decoder


def _guided_logits_of_the_second(model, requests, lag: int, attention: str, monkeypatch):
    """The second request's guided logits at each of its steps and its tokens, admitted ``lag`` steps after the
    first (none: alone); rng=counter, so its draws are its own."""
    import soundry.engine.batch as batch_module

    seen = []
    real = batch_module.apply_cfg
    monkeypatch.setattr(batch_module, "apply_cfg", lambda logits, cfg: seen.append(real(logits, cfg)) or seen[-1])
    batch = DecodeBatch(model.lm, 2, model.max_frames())
    batch.rng, batch.attention = "counter", attention
    jobs = [make_job(model, GenerationRequest(**{**r.__dict__, "id": f"{r.id}{lag}{attention}"}), c)
            for r, c in zip(requests, model.conditions(requests), strict=True)]
    if len(jobs) == 2:
        batch.admit(jobs[0])
        for _ in range(lag):
            batch.step()
    job, logits = jobs[-1], []
    batch.admit(job)
    while job in batch.jobs:
        slot = job.slot
        batch.step()
        logits.append(seen[-1][slot])
    return logits, DecodeBatch.tokens_of(job)


@pytest.mark.parametrize("lag", [0, 1, 3])
def test_per_request_attention_makes_a_requests_logits_independent_of_its_batch(lag, monkeypatch):
    """Item 7: a row's attention over its batch's furthest position and longest condition (the other keys masked)
    sums in another order than over its own keys alone: logits ~1e-6 apart on AVX2 and AVX-512 alike (measured
    here on both with ATEN_CPU_CAPABILITY), a token flipped wherever a draw falls that close to a boundary. With
    attention=per_request each request's rows attend over exactly their own keys: bitwise its logits alone. With
    the default (masked) the difference is bounded, not zero: the stated bound is 1e-5 of the logits' scale."""
    model = tiny_model("musicgen")
    first = GenerationRequest("rain on a tin roof with thunder far away and wind in the trees", 0.6, seed=3)
    second = GenerationRequest("a dog barking twice", 0.6, seed=4)
    alone, tokens = _guided_logits_of_the_second(model, [second], 0, "per_request", monkeypatch)
    batched, batched_tokens = _guided_logits_of_the_second(model, [first, second], lag, "per_request", monkeypatch)
    assert torch.equal(batched_tokens, tokens)
    assert all(torch.equal(a, b) for a, b in zip(alone, batched, strict=True))
    alone, tokens = _guided_logits_of_the_second(model, [second], 0, "masked", monkeypatch)
    batched, batched_tokens = _guided_logits_of_the_second(model, [first, second], lag, "masked", monkeypatch)
    same = next((t for t in range(tokens.shape[-1]) if not torch.equal(tokens[:, t], batched_tokens[:, t])),
                tokens.shape[-1])  # logits are comparable up to the first frame whose tokens differ (a near-tie)
    steps = same + 1  # (delays: step s writes frame s - delay; bounding up to that step is conservative enough)
    for a, b in zip(alone[:steps], batched[:steps], strict=True):
        assert (a - b).abs().max() <= 1e-5 * a.abs().max()


# -- item 4: graphs per (batch bucket, key-length bucket) --------------------------------------------------

def test_the_key_ladder_is_powers_of_two_up_to_the_cache_and_a_step_picks_the_smallest_that_covers(model):
    """Item 4: the default key buckets double from 64 to the cache's length (musicgen-large's 30 s: 1504
    positions); a step attends over the smallest bucket holding the furthest job's position + 1."""
    from soundry.engine.static_steps import key_ladder

    assert key_ladder(1504) == (64, 128, 256, 512, 1024, 1504)
    assert key_ladder(64) == (64,) and key_ladder(40) == (40,) and key_ladder(65) == (64, 65)
    batch = DecodeBatch(model.lm, max_slots=4, max_frames=model.max_frames())
    assert StaticSteps(batch).key_buckets == [64, 128, 256, batch.cache.max_len]
    steps = StaticSteps(batch, key_buckets=(8, 4, 4, 10_000))
    assert steps.key_buckets == [4, 8, batch.cache.max_len]  # sorted, once each, the cache's length last
    assert [steps.key_bucket(n) for n in (1, 4, 5, 8, 9, batch.cache.max_len)] == \
        [4, 4, 8, 8, batch.cache.max_len, batch.cache.max_len]
    assert StaticSteps(batch, key_buckets=()).key_buckets == [batch.cache.max_len]  # the whole cache only


def _self_attention_keys(batch: DecodeBatch, monkeypatch) -> list[int]:
    """The key length of every self-attention call over ``batch``'s cache (the positions a step reads)."""
    import soundry.models.audiocraft.lm.transformer as transformer

    seen, real = [], transformer.attend
    cache = {t.untyped_storage().data_ptr() for t in batch.cache.k}

    def attend(q, k, v, mask):
        if k.untyped_storage().data_ptr() in cache:
            seen.append(k.shape[-2])
        return real(q, k, v, mask)

    monkeypatch.setattr(transformer, "attend", attend)
    return seen


def _decode_together(model, requests, lags, static: StaticSteps | None = None, key_buckets=None, monkeypatch=None):
    """Decode ``requests`` in one batch, request i admitted ``lags[i]`` steps in (so rows sit at different
    positions); returns each one's tokens and, per step, (the host's key length, the keys self-attention read)."""
    batch = DecodeBatch(model.lm, max_slots=4, max_frames=model.max_frames(), max_prefix=model.max_prefix)
    if key_buckets is not None:
        batch.static = StaticSteps(batch, buckets=(1, 2, 4), use_graphs=False, key_buckets=key_buckets)
    seen = _self_attention_keys(batch, monkeypatch)
    jobs = [make_job(model, GenerationRequest(**{**r.__dict__, "id": f"{r.id}{key_buckets}"}), c)
            for r, c in zip(requests, model.conditions(requests), strict=True)]
    steps, done = [], 0
    while done < len(jobs):
        for job, lag in zip(jobs, lags, strict=True):
            if lag == len(steps):
                batch.admit(job)
        key_len, layers = (batch.key_len(), len(seen)) if batch.jobs else (0, len(seen))
        done += len(batch.step())
        steps.append((key_len, seen[layers:]))
    return [DecodeBatch.tokens_of(j) for j in jobs], steps


@pytest.mark.parametrize("kind", ["audiogen", "musicgen-melody"])
def test_static_steps_over_key_buckets_give_the_dynamic_steps_tokens(kind, monkeypatch):
    """Item 4: the static step attends over the smallest key bucket that covers the furthest row (later keys
    masked) and samples exactly what the dynamic step does: requests crossing several bucket boundaries mid-way,
    admitted at different steps (rows at different positions), a continuation prefilled from an audio prompt,
    a melody model's prefix (its positions count)."""
    from tests.helpers_models import continuation

    m = tiny_model(kind)
    requests = [GenerationRequest("wind through pine trees", 0.6, seed=11),
                GenerationRequest("a door slams", 0.4, seed=12, top_k=3),
                GenerationRequest("glass breaking", 0.3, seed=13, top_k=0, top_p=0.7, temperature=0.8)]
    if kind == "audiogen":
        c = continuation(kind)
        requests[2].prompt_codes = m.prompt_codes(c["prompt_wav"][0], c["prompt_sample_rate"])  # 0.4 s
        requests[2].duration = 0.7  # admitted at step 9 it starts at position 20: the furthest row at once
    lags = [0, 5, 9]
    # the melody model's rows start after their prefix (text and chroma: ~250 positions here)
    buckets = (2, 4, 8, 16, 32) if kind == "audiogen" else (248, 256, 264, 272, 288)
    dynamic, _ = _decode_together(m, requests, lags, monkeypatch=monkeypatch)
    static, steps = _decode_together(m, requests, lags, key_buckets=buckets, monkeypatch=monkeypatch)
    for a, b in zip(dynamic, static, strict=True):
        assert torch.equal(a, b)
    max_len = m.max_frames() + 3 + 1 + m.max_prefix
    ladder = [*buckets, max_len]
    used = [keys[0] for _, keys in steps]
    for (key_len, keys), picked in zip(steps, used, strict=True):  # every layer reads the same, smallest cover
        assert set(keys) == {picked} and picked == min(k for k in ladder if k >= key_len)
    assert set(buckets[1:]) <= set(used)  # crossed each boundary mid-request
    assert used[0] == 2 if kind == "audiogen" else steps[0][0] > 248


def test_the_positions_a_static_step_reads_drop_with_its_key_bucket(model, monkeypatch):
    """Item 4: before, every static step (and so every replay) read all max_len positions of every layer; now
    a step reads its key bucket's, on the default ladder 64 while the furthest row is under 64."""
    request = GenerationRequest("rain", 1.6, seed=5)  # 80 frames: past the 64 bucket
    batch = DecodeBatch(model.lm, max_slots=2, max_frames=model.max_frames())
    batch.static = StaticSteps(batch, use_graphs=False)
    seen = _self_attention_keys(batch, monkeypatch)
    batch.admit(make_job(model, request, model.conditions([request])[0]))
    per_step = []
    while batch.jobs:
        before = len(seen)
        batch.step()
        per_step.append(set(seen[before:]))
    layers = model.lm.cfg.num_layers
    assert per_step[0] == {64} and per_step[-1] == {128} and len(per_step) == 83
    assert per_step.count({64}) == 64 and per_step.count({128}) == 19  # positions 0..63 read 64 keys
    read = sum(next(iter(s)) for s in per_step) * layers
    assert read == (64 * 64 + 19 * 128) * layers < 0.2 * len(per_step) * batch.cache.max_len * layers


def test_graphs_are_captured_once_per_batch_and_key_bucket_into_one_pool_and_replayed_by_key_length(
        model, graphs):
    """Item 4: prepare captures one graph per (batch bucket, key bucket), the largest first, every one into
    the first's memory pool; preparing again on the same cache captures nothing; each step replays the graph
    of its batch bucket and of the smallest key bucket holding its rows' positions; a cache version bump
    (a long prompt) makes them stale: the dynamic step serves, and they are captured again, once each, when
    the batch is empty."""
    batch = DecodeBatch(model.lm, max_slots=4, max_frames=model.max_frames())
    batch.static = steps = StaticSteps(batch, buckets=(1, 2, 4), use_graphs=True, key_buckets=(8, 16))
    max_len = batch.cache.max_len
    steps.prepare()
    pairs = [(b, k) for b in (1, 2, 4) for k in (8, 16, max_len)]
    assert steps.pairs == pairs and sorted(steps.graphs) == pairs and len(graphs.captured) == 9
    assert [steps.graphs[p] for p in reversed(pairs)] == graphs.captured  # largest first
    assert {g.pool() for g in graphs.captured} == {graphs.captured[0].pool()}  # one pool
    steps.prepare()
    assert len(graphs.captured) == 9  # same cache version: nothing captured again
    first, second = GenerationRequest("rain", 0.4, seed=1), GenerationRequest("wind", 0.2, seed=2)
    jobs = [make_job(model, r, c) for r, c in zip([first, second], model.conditions([first, second]), strict=True)]
    batch.admit(jobs[0])
    for _ in range(10):  # positions 0..9: 8 steps over 8 keys, 2 over 16
        batch.step()
    batch.admit(jobs[1])  # at position 0 beside the first at 10: the furthest row decides
    for _ in range(7):
        batch.step()
    assert dict(steps.replayed) == {(1, 8): 8, (1, 16): 2, (2, 16): 6, (2, max_len): 1}
    assert {p: g.replays for p, g in steps.graphs.items() if g.replays} == dict(steps.replayed)
    assert steps.dynamic_steps == 0
    _finish(batch)
    long = GenerationRequest(LONG_PROMPT, 0.1, seed=3)
    batch.admit(make_job(model, long, model.conditions([long])[0]))  # grows the condition cache: stale
    batch.step()
    assert steps.dynamic_steps == 1 and steps.replays == sum(steps.replayed.values())
    _finish(batch)
    steps.prepare()
    assert len(graphs.captured) == 18 and sorted(steps.graphs) == pairs
    assert steps.captured_version == batch.cache.version
    assert int((batch.steps + batch.offsets).max()) == 0

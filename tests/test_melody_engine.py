"""MusicGen-melody in the engine: prepended conditions (the melody's chroma and the text) give audiocraft's
logits and tokens exactly, and requests with and without a melody, with prefixes of different lengths, share
one running batch with each giving what it gives alone."""

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from soundry.engine import Engine, GenerationRequest
from soundry.engine.generate import generate
from soundry.engine.jobs import job_windows, prepare_melody
from soundry.models.audiocraft.checkpoint import LMConfig, load_package, parse_cfg
from soundry.models.errors import CheckpointError
from tests.helpers_models import TINY, assert_close_rel, melody_reference, tiny_model
from tests.helpers_teacher import teacher_logits

KINDS = ["musicgen-melody", "musicgen-stereo-melody"]


@pytest.mark.parametrize("kind", KINDS)
def test_teacher_forced_logits_with_the_melody_prepended(kind):
    model, ref = tiny_model(kind), melody_reference(kind)
    chroma = model.melody.chroma(ref["melody_model_rate"], shift=ref["teacher_shifts"])
    assert_close_rel(model.melody(chroma), ref["condition_self_wav"])
    logits, mask = teacher_logits(model, ref["teacher_codes"], ref["prompts"][:2], chroma=chroma)
    assert torch.equal(mask, ref["teacher_mask"].bool())
    assert_close_rel(logits[mask], ref["teacher_logits"][mask])


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_tokens_with_a_melody_without_one_and_across_windows(kind):
    model, ref = tiny_model(kind), melody_reference(kind)
    prompts, tune, rate = ref["prompts"][:2], ref["melody_wav"], ref["melody_sample_rate"]
    with_melody = generate(model, prompts, ref["greedy_duration"], top_k=1, cfg_coef=3.0, melody=tune,
                           melody_sample_rate=rate, demucs_shifts=ref["greedy_shifts"])
    assert torch.equal(with_melody.tokens, ref["greedy_tokens"])
    silent = generate(model, prompts, ref["greedy_duration"], top_k=1, cfg_coef=3.0)
    assert torch.equal(silent.tokens, ref["nomelody_tokens"])
    assert not torch.equal(silent.tokens, with_melody.tokens)
    long = generate(model, prompts[:1], ref["long_duration"], top_k=1, cfg_coef=3.0, melody=tune[:1],
                    melody_sample_rate=rate, demucs_shifts=ref["long_shifts"], max_duration=ref["max_duration"],
                    extend_stride=ref["extend_stride"])
    assert len(ref["long_shifts"]) == 3  # one stem separation per window
    assert torch.equal(long.tokens, ref["long_tokens"])


def _tune(ref, i=0):
    """One second of a fixture's tune (the engine tests need a melody, not the full three seconds' separation)."""
    return ref["melody_wav"][i][..., : ref["melody_sample_rate"]]


def _melody_requests(ref):
    tune, rate = _tune(ref), ref["melody_sample_rate"]
    return [
        GenerationRequest("calm piano melody with soft strings and warm pads", 0.8, top_k=50, seed=5, melody=tune,
                          melody_sample_rate=rate),
        GenerationRequest("drums", 0.6, top_k=50, seed=6),  # a short prompt: a short prefix
        GenerationRequest("an upbeat electronic dance track with heavy bass and bright synth leads", 1.0, top_k=20,
                          top_p=0.9, seed=7, negative_prompt="slow"),
        GenerationRequest("a jazz trio", 1.2, top_k=50, seed=8, melody=_tune(ref, 1), melody_sample_rate=rate),
    ]


def _run(model, requests, max_batch, **engine_kw):
    engine = Engine(model, max_batch=max_batch, **engine_kw).start()
    try:
        futures = [engine.submit(r) for r in requests]
        tokens = [f.result(timeout=300).tokens for f in futures]
        return tokens, engine.stats.max_batch_size
    finally:
        engine.stop()


def _copy(r: GenerationRequest) -> GenerationRequest:
    return GenerationRequest(**{**r.__dict__, "id": r.id + "-again", "melody_chroma": None})


def test_melody_and_text_only_requests_share_a_batch_and_each_gives_what_it_gives_alone():
    model = tiny_model("musicgen-melody")
    ref = melody_reference("musicgen-melody")
    requests = _melody_requests(ref)
    state = random.getstate()
    # stems computed by Engine.submit; attention="per_request": exactly what each gives alone (the default agrees up
    # to float rounding)
    alone = [_run(model, [_copy(r)], max_batch=1, attention="per_request")[0][0] for r in requests]
    assert random.getstate() == state  # demucs's shift came from each request's seed, not the process's random
    together = [_copy(r) for r in requests]
    for r in together:  # the stems first, so that the four submits are instant and all four decode together
        prepare_melody(model, r, job_windows(model, r))
    batched, most = _run(model, together, max_batch=8, attention="per_request")
    assert most == len(requests)
    for a, b in zip(alone, batched, strict=True):
        assert torch.equal(a, b)
    # the melody matters
    no_tune = _run(model, [GenerationRequest(requests[0].prompt, 0.8, top_k=50, seed=5)], max_batch=1)[0][0]
    assert not torch.equal(no_tune, alone[0])


def test_a_seeded_melody_request_is_reproducible_and_its_chroma_cached():
    model = tiny_model("musicgen-stereo-melody")
    ref = melody_reference("musicgen-stereo-melody")
    req = GenerationRequest("a waltz", 0.5, top_k=50, seed=42, melody=_tune(ref),
                            melody_sample_rate=ref["melody_sample_rate"])
    engine = Engine(model, max_batch=2).start()
    try:
        first = engine.submit(_copy(req)).result(timeout=300).tokens
        misses = engine.chroma_cache.misses
        again = engine.submit(_copy(req)).result(timeout=300).tokens
        assert engine.chroma_cache.misses == misses and engine.chroma_cache.hits >= 1
        other_seed = engine.submit(GenerationRequest(**{**req.__dict__, "id": "s43", "seed": 43})).result(300).tokens
    finally:
        engine.stop()
    assert torch.equal(first, again)
    assert not torch.equal(first, other_seed)


def test_the_engine_follows_a_melody_across_windows():
    """A melody request longer than the model's context (the tiny reference's 2.5 s context, 1.5 s stride: a
    4.5 s request is three windows) through the engine: each window is conditioned on the chroma of 2.5 s of the
    tune from the window's start, wrapping around past the tune's end (the 3 s tune's third window, at 3 s,
    reads it from its beginning), one stem separation per window with the request's seeded shifts, cached under
    (digest, window start, shift); its tokens, and those of a text-only request submitted beside it, are the
    reference loop's (which gives audiocraft's across windows: ``test_greedy_tokens_with_a_melody_...``) for each
    request alone, with the same shifts."""
    from soundry.engine.jobs import melody_shifts
    from soundry.models.audiocraft.conditioners.melody import melody_to_model

    model, ref = tiny_model("musicgen-melody"), melody_reference("musicgen-melody")
    model.max_duration, model.extend_stride = ref["max_duration"], ref["extend_stride"]  # the reference's context
    # the tiny demucs's stems put every frame's strongest bin at the same note whatever the tune, so the one-hot
    # chroma would be one chroma for every window: soft chroma (xp.cfg's chroma_stem.argmax false) tells them apart
    model.melody.extractor.argmax = False
    rate, duration = ref["melody_sample_rate"], ref["long_duration"]
    requests = [GenerationRequest(ref["prompts"][0], duration, top_k=1, seed=11, melody=ref["melody_wav"][0][:1],
                                  melody_sample_rate=rate),
                GenerationRequest(ref["prompts"][1], 1.2, top_k=50, seed=12)]
    engine = Engine(model, max_batch=2).start()
    try:
        submitted = [_copy(r) for r in requests]
        futures = [engine.submit(r) for r in submitted]
        tokens = [f.result(timeout=600).tokens for f in futures]
        cached = dict(engine.chroma_cache._items)
        again = engine.submit(_copy(requests[0]))  # the same tune, seed and windows: no separation
        misses = engine.chroma_cache.misses
        assert torch.equal(again.result(timeout=600).tokens, tokens[0])
        assert engine.chroma_cache.misses == misses and len(engine.chroma_cache) == len(cached)
    finally:
        engine.stop()
    for r, got in zip(requests, tokens, strict=True):
        alone = generate(model, [r.prompt], r.duration, top_k=r.top_k, cfg_coef=3.0, seed=r.seed, melody=r.melody,
                         melody_sample_rate=rate if r.melody is not None else None, max_duration=ref["max_duration"],
                         extend_stride=ref["extend_stride"])
        assert torch.equal(got, alone.tokens[0])
    windows = job_windows(model, requests[0])
    assert [w.start / model.frame_rate for w in windows] == [0.0, 1.5, 3.0]
    draw = melody_shifts(model, 11)
    shifts = [draw() for _ in windows]
    wav = melody_to_model(requests[0].melody[None], rate, model.sample_rate, model.channels)
    n, span = wav.shape[-1], int(ref["max_duration"] * model.sample_rate)
    assert n == 3 * model.sample_rate  # the third window starts where the tune ends
    keys = [k for k in cached if k[1] in (0, int(1.5 * model.sample_rate), n) and k[2] in shifts]
    assert sorted((k[1], k[2]) for k in keys) == sorted(zip((0, int(1.5 * model.sample_rate), n), shifts,
                                                            strict=True))
    assert len({k[0] for k in keys}) == 1  # one digest: the tune's
    clips = [wav[..., :span], torch.cat([wav[..., n // 2:], wav[..., : span - n // 2]], -1), wav[..., :span]]
    by_start = {k[1]: cached[k] for k in keys}
    for start, clip, shift in zip((0, int(1.5 * model.sample_rate), n), clips, shifts, strict=True):
        assert torch.equal(by_start[start], model.melody.chroma(clip, shift=shift))
    assert not torch.equal(by_start[0], by_start[int(1.5 * model.sample_rate)])
    assert not torch.equal(by_start[0], by_start[n])  # the same clip, another shift
    for window_chroma, start in zip(submitted[0].melody_chroma, (0, int(1.5 * model.sample_rate), n), strict=True):
        assert torch.equal(window_chroma, by_start[start][0])  # window w is conditioned on window w's chroma


def test_a_melody_on_a_model_without_melody_conditioning_is_refused():
    model = tiny_model("musicgen")
    engine = Engine(model, max_batch=1)
    with pytest.raises(ValueError, match="not conditioned on a melody"):
        engine.submit(GenerationRequest("x", 0.5, melody=torch.zeros(1, 32000), melody_sample_rate=32000))
    with pytest.raises(ValueError, match="not conditioned on a melody"):
        generate(model, ["x"], 0.5, melody=torch.zeros(1, 32000))


def test_checkpoint_check_names_the_xp_cfg_key_it_refuses():
    cfg = parse_cfg(load_package(TINY["musicgen-melody"] / "state_dict.bin"), TINY["musicgen-melody"])
    assert LMConfig.from_cfg(cfg).prepend == ("self_wav", "description")
    with pytest.raises(CheckpointError, match=r"fuser\.sum"):
        LMConfig.from_cfg({**cfg, "fuser": {**cfg["fuser"], "sum": ["self_wav"], "prepend": ["description"]}})
    bad = {**cfg, "conditioners": {**cfg["conditioners"], "self_wav": {"model": "clap", "clap": {}}}}
    with pytest.raises(CheckpointError, match=r"conditioners\.self_wav"):
        LMConfig.from_cfg(bad)


def test_a_melody_is_separated_off_the_decode_loop(monkeypatch):
    """While one request's melody is being separated (on the submitting thread), the running requests keep
    decoding: the separation here waits until a running request has advanced five steps."""
    model, ref = tiny_model("musicgen-melody"), melody_reference("musicgen-melody")
    started, progressed, steps_seen = threading.Event(), threading.Event(), []
    separate = model.melody.chroma

    def waiting_chroma(wav, shift):
        started.set()
        assert progressed.wait(120), "no request advanced while a melody was being separated"
        return separate(wav, shift)

    def progress(done, _total):
        if started.is_set():
            steps_seen.append(done)
            if len(steps_seen) >= 5:
                progressed.set()

    monkeypatch.setattr(model.melody, "chroma", waiting_chroma)
    engine = Engine(model, max_batch=4).start()
    try:
        drums = GenerationRequest("a long drum solo", 20.0, seed=1)
        engine.submit(drums, progress)
        with ThreadPoolExecutor(1) as pool:  # as the task runner submits: from its own thread
            tune = pool.submit(engine.submit, GenerationRequest("a tune", 0.4, seed=2, melody=_tune(ref),
                                                                melody_sample_rate=ref["melody_sample_rate"]))
            assert tune.result(timeout=300).result(timeout=300).tokens.shape[-1] == 20
        assert progressed.is_set() and len(steps_seen) >= 5
        assert engine.cancel(drums.id)
    finally:
        engine.stop()


def test_static_steps_serve_prefixes_as_the_dynamic_step_does():
    """The static-shape steps (what CUDA graphs replay: bucketed slots, attention over a key bucket, prefix
    positions included) give a melody request and text-only ones the dynamic step's tokens."""
    model, ref = tiny_model("musicgen-melody"), melody_reference("musicgen-melody")
    requests = _melody_requests(ref)[:3]
    for r in requests:  # the stems once, shared by both runs
        prepare_melody(model, r, job_windows(model, r))
    dynamic, _ = _run(model, [_copy_prepared(r) for r in requests], max_batch=4)
    static, most = _run(model, [_copy_prepared(r) for r in requests], max_batch=4, static_steps=True)
    assert most == 3  # bucket 4: one padding slot stepped beside them
    for d, s in zip(dynamic, static, strict=True):
        assert torch.equal(d, s)


def _copy_prepared(r: GenerationRequest) -> GenerationRequest:
    return GenerationRequest(**{**r.__dict__, "id": r.id + "-copy"})


def _melody_request(ref, name: str, seconds: float = 1.0) -> GenerationRequest:
    return GenerationRequest(f"a tune for {name}", 0.4, seed=3, melody=ref["melody_wav"][0][..., :int(
        seconds * ref["melody_sample_rate"])], melody_sample_rate=ref["melody_sample_rate"], id=name)


def test_melody_separations_in_a_process_are_capped_by_the_setting(tiny_models):
    """``melody_separations`` (1) separations run at once over the process's engines (here two melody models),
    the others wait for a free one: no two threads are ever inside demucs together (before: every submitting
    thread separated at once, 4 × max_batch of them)."""
    from soundry.tasks.engines import EngineManager

    manager = EngineManager(max_batch=2, melody_separations=1)
    engines = [manager.get("musicgen-melody"), manager.get("musicgen-stereo-melody")]
    ref = melody_reference("musicgen-melody")
    inside, most, guard = set(), [0], threading.Lock()
    two_inside = threading.Event()

    def enter(_module, _args):  # waits (up to 5 s) for another separation to join it: they meet unless capped
        with guard:
            inside.add(threading.get_ident())
            most[0] = max(most[0], len(inside))
            if len(inside) > 1:
                two_inside.set()
        two_inside.wait(5)

    def leave(_module, _args, _out):
        with guard:
            inside.discard(threading.get_ident())

    bags = {id(e.model.melody.demucs): e.model.melody.demucs for e in engines}
    handles = [h for bag in bags.values() for m in bag.models
               for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        with ThreadPoolExecutor(3) as pool:
            futures = list(pool.map(lambda i: engines[i % 2].submit(_melody_request(ref, f"r{i}")), range(3)))
        assert all(f.result(timeout=300).tokens.shape[-1] == 20 for f in futures)
    finally:
        for h in handles:
            h.remove()
        manager.stop()
    assert most[0] == 1


def test_a_request_canceled_mid_separation_stops_at_demucs_next_layer():
    """``Engine.cancel`` reaches a request whose melody is being separated (on the submitting thread, before the
    request is queued): the separation stops at demucs's next layer, before its window's chroma exists, and
    submit raises GenerationCanceled; a request queued for the separation slot is canceled too (before: cancel
    did not know either request, and both separated every window to the end)."""
    from soundry.engine import GenerationCanceled

    model, ref = tiny_model("musicgen-melody"), melody_reference("musicgen-melody")
    engine = Engine(model, max_batch=2).start()
    bag = model.melody.demucs
    started, go_on = threading.Event(), threading.Event()

    def hold(_module, _args):  # the first segment of the first separation waits until the test canceled it
        started.set()
        go_on.wait(120)

    handles = [m.register_forward_pre_hook(hold) for m in bag.models]
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(engine.submit, _melody_request(ref, "first", 3.0))
            assert started.wait(300)
            second = pool.submit(engine.submit, _melody_request(ref, "second"))
            deadline = time.monotonic() + 120
            while not engine.cancel("second"):  # known once queued behind the first's separation
                assert time.monotonic() < deadline and not second.done()
                time.sleep(0.01)
            with pytest.raises(GenerationCanceled):
                second.result(timeout=120)
            assert engine.cancel("first")
            go_on.set()
            with pytest.raises(GenerationCanceled):
                first.result(timeout=120)
        assert len(engine.chroma_cache) == 0  # the window being separated never finished
        assert engine.cancel("first") is False  # nothing left of it
    finally:
        go_on.set()
        for h in handles:
            h.remove()
        engine.stop()

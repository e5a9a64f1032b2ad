"""GPU-only checks of soundry's engine (run by bench/gpu_check.sh; never run on a GPU yet), from the repo root:

    SOUNDRY_TEST_DEVICE=cuda python3 bench/gpu_checks.py [recapture] [replays] [syncs] [mbd] [stale] [sdpa]
                                                        [seed] [keys] [scale]   (default: all but recapture)

recapture  issue 31 item 1: a full-window job and a long prompt, then graphs captured again once the batch is
           empty (before the fix a warm-up wrote past the cache: a device-side assert that kills the process's
           CUDA context, so gpu_check.sh runs it in a process of its own)
replays    issue 31 item 2: an Engine under load with a long prompt among short ones: steps replayed from a
           graph vs dynamic steps (on a GPU the condition cache is allocated at max_text_tokens: no stale graphs)
syncs      issue 31 items 3 and 6: torch.cuda.set_sync_debug_mode("error") around an engine pass (conditions,
           admission, dynamic and graph steps, a window's end) and around prompt_codes; the first sync raises
mbd        issue 31 item 3: engine steps/s alone and while a MultiBand Diffusion decode runs on another thread
           (tiny models: it shows whether the decode stalls the LM's steps, not a served speed)

stale  tiny audiogen: CUDA graphs captured, a long prompt grows the condition cache, it leaves and the
       cache shrinks back into new tensors (the old ones kept and poisoned with NaN): the tokens must
       equal the eager static step's (issue 24, item 1; graphs are keyed on the cache's version)
sdpa   one layer of musicgen-large's shape: forward_cached under each SDPA backend vs MATH, with the
       engine's strided q/K/V, masked (static and dynamic key lengths) and unmasked (attention=lengths)
seed   rng=counter: a seed gives the same tokens on the CPU and on the GPU (fp32, top_k=250)
keys   issue 31 item 4: musicgen-large bf16, 16 slots (or what fit_slots allows): one graph per key-length
       bucket for the full batch (the count checked, and that a second prepare captures none), then per bucket
       the replay time with the slots inside it against the whole-cache graph's at the same positions, and the
       KV bytes each reads
scale  audiogen-medium and musicgen-large, bf16 as served (mixed precision), the slots engine.memory.fit_slots
       allows (at most 64), the engine's real cache (condition cache at 256 tokens): KV bytes, the graph count
       (one per batch bucket x key bucket) and capture time, graphs vs dynamic steps/s, then the batch filled to
       that count with a 256-token prompt (no OOM)
SOUNDRY_TEST_DEVICE=cpu runs recapture, replays, mbd and keys on the CPU (graphs off; keys on the tiny musicgen,
eager): a dry run of the script.
Adapted from the shared GPU kit (../shared/gpu-kit/gpu_checks.py) to the code as it is now.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("SOUNDRY_TEST_DEVICE", "cuda")

import torch  # noqa: E402

import tests.device  # noqa: E402  (models load on CUDA, TF32 off)
from soundry.engine import Engine, GenerationRequest  # noqa: E402
from soundry.engine.batch import DecodeBatch, Job  # noqa: E402
from soundry.engine.jobs import make_job  # noqa: E402
from soundry.engine.memory import fit_slots  # noqa: E402
from soundry.engine.static_steps import StaticSteps  # noqa: E402
from soundry.engine.windows import Window  # noqa: E402
from soundry.models.audiocraft.lm.kv_cache import KVCache  # noqa: E402
from soundry.models.audiocraft.lm.precision import keep_fp32_  # noqa: E402
from soundry.models.audiocraft.lm.transformer import TransformerLM  # noqa: E402
from soundry.models.audiocraft.shapes import lm_config  # noqa: E402

torch.set_grad_enabled(False)
DEV = torch.device(tests.device.TEST_DEVICE)
LONG = " ".join(["dog barking in the distance while cars pass by"] * 12)  # > 64 T5 tokens


def _sync() -> None:
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def recapture() -> None:
    from tests.helpers_models import tiny_model

    m = tiny_model("audiogen")
    b = DecodeBatch(m.lm, 4, 20, device=DEV)  # 20 frames: a 0.4 s request fills the window
    s = b.static = StaticSteps(b, buckets=(1, 2, 4))
    s.prepare()
    reqs = [GenerationRequest("rain", 0.4, seed=1), GenerationRequest(LONG, 0.2, seed=2)]
    for r, c in zip(reqs, m.conditions(reqs), strict=True):
        b.admit(make_job(m, r, c))
    while b.jobs:
        b.step()
    s.prepare()  # captured again after the version bump: every bucket's warm-up advances the free slots
    _sync()
    top = int((b.steps + b.offsets).max())
    print(f"[recapture] graphs captured again on cache version {s.captured_version}; free slots at position "
          f"<= {top} of {b.cache.max_len}: {'OK' if top < b.cache.max_len else 'BUG'}", flush=True)


def replays() -> None:
    from tests.helpers_models import tiny_model

    engine = Engine(tiny_model("audiogen"), max_batch=4).start()
    try:
        futures = [engine.submit(GenerationRequest("rain", 1.0, seed=i)) for i in range(3)]
        futures.append(engine.submit(GenerationRequest(LONG, 1.0, seed=3)))
        futures += [engine.submit(GenerationRequest("wind", 1.0, seed=4 + i)) for i in range(4)]
        for f in futures:
            f.result(timeout=120)
        steps = engine._batch.static
        st = engine.stats
        if steps is None:
            print("[replays] static steps off: " + ("capture failed (see the log above)  <-- CHECK"
                                                    if DEV.type == "cuda" else "the CPU (a dry run)"), flush=True)
        else:
            bad = DEV.type == "cuda" and steps.dynamic_steps
            print(f"[replays] {st.steps} steps under load with a long prompt: {steps.replays} graph replays, "
                  f"{steps.dynamic_steps} dynamic (graphs stale){'  <-- CHECK' if bad else ''}; replays per (batch "
                  f"bucket, key bucket) {dict(sorted(steps.replayed.items()))}; mean batch "
                  f"{st.mean_batch_size:.2f}, {st.steps / max(st.step_seconds, 1e-9):.0f} steps/s (timed on the "
                  f"device)", flush=True)
    finally:
        engine.stop()


def syncs() -> None:
    from tests.helpers_models import continuation, tiny_model

    m = tiny_model("audiogen")
    b = DecodeBatch(m.lm, 4, m.max_frames(), max_cond_len=m.conditioner.max_tokens)
    s = StaticSteps(b)
    s.prepare()
    c = continuation("audiogen")
    reqs = [GenerationRequest("rain", 0.3, seed=1), GenerationRequest(LONG, 0.5, seed=2, top_k=0, top_p=0.9)]
    for static in (False, True):
        b.static = s if static else None
        torch.cuda.synchronize()
        try:
            torch.cuda.set_sync_debug_mode("error")
            for r, cond in zip(reqs, m.conditions(reqs), strict=True):
                b.admit(make_job(m, GenerationRequest(**{**r.__dict__, "id": f"{r.id}{static}"}), cond))
            while b.jobs:
                b.step()
            print(f"[syncs] engine pass, {'graphs' if static else 'dynamic'}: no host sync", flush=True)
        except RuntimeError:
            print(f"[syncs] engine pass, {'graphs' if static else 'dynamic'}: a host sync  <-- BUG\n"
                  f"{traceback.format_exc(limit=-6)}", flush=True)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        for j in list(b.jobs):
            b.remove(j)
    try:  # on its own stream, which the caller then waits for: the stream sync is expected, anything else not
        torch.cuda.set_sync_debug_mode("warn")
        m.prompt_codes(c["prompt_wav"][0], c["prompt_sample_rate"])
        print("[syncs] prompt_codes ran (warnings above: syncs inside it besides its stream's)", flush=True)
    finally:
        torch.cuda.set_sync_debug_mode(0)


def mbd_overlap(seconds: float = 3.0) -> None:
    import threading

    from soundry.models.audiocraft.codecs.mbd import load_mbd
    from tests.helpers_models import TINY, tiny_model

    m = tiny_model("musicgen-stereo")
    mbd = load_mbd(str(TINY["musicgen-stereo"] / "mbd"), m.codec)
    tokens = torch.randint(0, m.cfg.card, (1, m.cfg.n_q, 250))
    mbd.tokens_to_wav(tokens[..., :10], seed=0, step_list=[999, 0])  # warm
    engine = Engine(m, max_batch=4).start()

    def rate() -> float:
        steps = engine.stats.steps
        time.sleep(seconds)
        return (engine.stats.steps - steps) / seconds

    try:
        reqs = [GenerationRequest("a drum loop", 120.0, seed=i) for i in range(4)]  # outlast the measurement
        futures = [engine.submit(r) for r in reqs]
        time.sleep(1.0)
        alone = rate()
        done = threading.Event()

        def diffuse() -> None:
            while not done.is_set():
                mbd.tokens_to_wav(tokens, seed=1)
                _sync()

        worker = threading.Thread(target=diffuse, daemon=True)
        worker.start()
        time.sleep(0.5)
        beside = rate()
        done.set()
        worker.join()
        print(f"[mbd] engine steps/s (4 requests, tiny musicgen-stereo): {alone:.0f} alone, {beside:.0f} while MBD "
              f"decodes 5 s on another thread ({beside / max(alone, 1e-9):.0%})", flush=True)
        for r in reqs:
            engine.cancel(r.id)
        for f in futures:
            f.exception(timeout=60)
    finally:
        engine.stop()


def stale() -> None:
    from tests.helpers_models import tiny_model

    m = tiny_model("audiogen")
    tokens = {}
    for graphs, keep_old in ((False, True), (True, False), (True, True)):
        b = DecodeBatch(m.lm, 4, m.max_frames())
        s = b.static = StaticSteps(b, use_graphs=graphs)
        s.prepare()
        reqs = [GenerationRequest("rain", duration=0.6, seed=8, top_k=50, top_p=0.0),
                GenerationRequest(LONG, duration=0.2, seed=9, top_k=50, top_p=0.0)]
        jobs = [make_job(m, r, c) for r, c in zip(reqs, m.conditions(reqs), strict=True)]
        b.admit(jobs[0])
        old = [*b.cache.ck, *b.cache.cv, b.cache.cross_mask]
        b.admit(jobs[1])  # > 64 tokens: the cross cache grows into new tensors
        if keep_old:
            for t in old:
                t.fill_(False if t.dtype == torch.bool else float("nan"))
        else:
            del old
        while b.jobs:
            b.step()
        torch.cuda.synchronize()
        tokens[(graphs, keep_old)] = DecodeBatch.tokens_of(jobs[0]).cpu()
        print(f"[stale] graphs={graphs} old kept+poisoned={keep_old}: cache version {b.cache.version}, "
              f"graphs captured on version {s.captured_version}", flush=True)
    ref = tokens[(False, True)]
    for key in ((True, False), (True, True)):
        diff = int((tokens[key] != ref).any(0).sum())
        print(f"[stale] graphs, kept+poisoned={key[1]}: {diff}/{ref.shape[-1]} frames differ from the eager "
              f"static step{'  <-- BUG' if diff else ''}", flush=True)


def sdpa(shape: str = "musicgen-large") -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cfg = dataclasses.replace(lm_config(shape), num_layers=1)
    backends = [None, SDPBackend.MATH, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                SDPBackend.FLASH_ATTENTION]
    for dtype in (torch.bfloat16, torch.float32):
        lm = TransformerLM(cfg).eval().to(DEV, dtype)
        if dtype != torch.float32:
            keep_fp32_(lm)
        rows, max_len = 16, 50 * 30 + 4
        g = torch.Generator(device=DEV).manual_seed(0)
        cache = KVCache(lm, rows, max_len, max_cond_len=64, device=DEV)
        for t in cache.k + cache.v:
            t.normal_(generator=g)
        cond = torch.randn(rows, 40, cfg.dim, device=DEV, dtype=dtype, generator=g)
        lens = torch.randint(1, 41, (rows, 1), device=DEV, generator=g)
        cache.set_condition(slice(0, rows), cond, torch.arange(40, device=DEV)[None] < lens)
        tokens = torch.randint(0, cfg.card, (rows, cfg.n_q, 1), device=DEV, generator=g)
        start = torch.randint(0, max_len - 8, (rows,), device=DEV, generator=g)
        same = torch.full_like(start, int(start.max()))
        for mode, st, key_len, cross_len, masked in (
                ("static", start, max_len, cache.max_cond_len, True),
                ("dynamic", start, int(start.max()) + 1, cache.cross_len, True),
                ("lengths", same, int(start.max()) + 1, cache.cross_len, False)):
            out = {}
            for be in backends:
                try:
                    with sdpa_kernel([be]) if be is not None else contextlib.nullcontext():
                        h = lm.forward_cached(tokens, st, cache, slice(0, rows), cache.cross_mask[:rows],
                                              key_len=key_len, cross_len=cross_len, self_mask=masked)
                    torch.cuda.synchronize()
                    out[be] = h.float()
                except RuntimeError as exc:
                    print(f"[sdpa] {dtype} {mode}: {be.name} unavailable ({str(exc).splitlines()[0][:90]})")
            ref = out[SDPBackend.MATH]
            for be, h in out.items():
                err = ((h - ref).abs().max() / ref.abs().max()).item()
                bad = not torch.isfinite(h).all() or err > (3e-2 if dtype == torch.bfloat16 else 1e-4)
                print(f"[sdpa] {dtype} {mode} keys={key_len}: {'default' if be is None else be.name:20s} "
                      f"rel err vs MATH {err:.2e}{'  <-- CHECK' if bad else ''}", flush=True)
        del lm, cache
        torch.cuda.empty_cache()


def seed() -> None:
    from soundry.models import load_model
    from tests.helpers_models import TINY

    out = {}
    for device in ("cpu", "cuda"):
        tests.device.TEST_DEVICE = device  # where tests.device sends the next load
        m = load_model(str(TINY["musicgen"]), precision="fp32")
        tests.device.TEST_DEVICE = "cuda"
        engine = Engine(m, max_batch=2, rng="counter").start()
        try:
            out[device] = engine.submit(GenerationRequest("rain on a tin roof", 1.0, seed=11)).result(120).tokens
        finally:
            engine.stop()
    diff = int((out["cpu"].cpu() != out["cuda"].cpu()).any(0).sum())
    print(f"[seed] rng=counter, seed 11: {diff}/{out['cpu'].shape[-1]} frames differ between CPU and CUDA "
          f"(fp32; a difference can be a near-tie in the logits, not the random numbers)", flush=True)


def _served_lm(shape: str) -> TransformerLM:
    """A real shape's LM on DEV with random weights, bf16 as served (precision=bf16: mixed, norms in fp32)."""
    with torch.device("meta"):
        lm = TransformerLM(lm_config(shape))
    lm = lm.to_empty(device=DEV).to(torch.bfloat16).eval()
    for name, p in lm.named_parameters():
        if "norm" in name and name.endswith("weight"):
            p.fill_(1.0)
        elif p.dim() == 1:
            p.zero_()
        else:
            p.normal_(0.0, p.shape[-1] ** -0.5)
    keep_fp32_(lm)  # what precision=bf16 serves
    return lm


def _fill(b: DecodeBatch, n: int, pos: int, last_cond: int = 16) -> None:
    """The batch emptied, then ``n`` jobs of a whole window each at step ``pos`` (random conditions of 16
    tokens, the last one's ``last_cond``)."""
    for j in list(b.jobs):
        b.remove(j)
    dim, dtype = b.lm.cfg.dim, b.cache.dtype
    for i in range(n):
        req = GenerationRequest("x", duration=b.max_frames / 50, seed=i, top_k=250, top_p=0.0)
        L = last_cond if i == n - 1 else 16
        cond = torch.randn(2, L, dim, device=DEV, dtype=dtype)
        job = Job(req, [Window(b.max_frames, 0)], cond, torch.ones(2, L, dtype=torch.bool, device=DEV),
                  torch.Generator(device=DEV).manual_seed(i))
        b.admit(job)
        job.step = pos
        b.steps[job.slot] = pos


def _graph_count(s: StaticSteps) -> str:
    """The graphs captured against one per (batch bucket, key bucket) (issue 31 item 4)."""
    want = len(s.buckets) * len(s.key_buckets)
    return (f"{len(s.graphs)} graphs ({len(s.buckets)} batch x {len(s.key_buckets)} key buckets "
            f"{s.key_buckets}){'' if len(s.graphs) == want else f'  <-- BUG: not {want}'}")


def keys(shape: str = "musicgen-large", slots: int = 16, replays: int = 10) -> None:
    """Issue 31 item 4: a graph replay per key-length bucket against the whole cache's graph, with the batch's
    slots at a position inside each bucket (the same position for both); the graph count. On the CPU (a dry
    run): the tiny musicgen's eager static step per key bucket, no graphs."""
    if DEV.type == "cuda":
        lm = _served_lm(shape)
        frames = int(lm.cfg.segment_duration * 50)
    else:
        from tests.helpers_models import tiny_model

        shape, lm, frames = "tiny musicgen (CPU, eager)", tiny_model("musicgen").lm, 1500
    slots = fit_slots(lm, slots, frames, DEV, 0.9, shape, max_cond_len=256)
    b = DecodeBatch(lm, slots, frames, max_cond_len=256)  # as the engine allocates it on a GPU
    s = b.static = StaticSteps(b, buckets=(slots,))  # the full batch only: one graph per key bucket
    t0 = time.perf_counter()
    s.prepare()
    _sync()
    took, captured = time.perf_counter() - t0, dict(s.graphs)
    s.prepare()  # the same cache version: nothing is captured again
    again = "" if s.graphs == captured else "  <-- BUG: captured again"
    print(f"[keys] {shape} slots={slots}: {_graph_count(s) if s.use_graphs else 'no graphs (the CPU)'}, captured "
          f"in {took:.1f} s{again}", flush=True)
    per_position = 2 * slots * b.cache.nbytes_per_position()  # K and V of both rows of every slot, every layer
    full = b.cache.max_len

    def per_step(k: int, pos: int) -> float:
        """Seconds a step over ``k`` keys, at positions pos .. pos + replays - 1."""
        b.steps[:slots] = pos
        run = s.graphs[slots, k].replay if s.use_graphs else lambda: s._run(slots, k)
        run()  # warm
        b.steps[:slots] = pos
        _sync()
        t = time.perf_counter()
        for _ in range(replays):
            run()
        _sync()
        return (time.perf_counter() - t) / replays

    _fill(b, slots, 0)
    for k in s.key_buckets:
        pos = max(0, k - replays)  # the furthest key each step needs stays inside the bucket
        bucket, whole = per_step(k, pos), per_step(full, pos)
        print(f"[keys] {shape} slots={slots} keys {k:5d} (positions {pos}..{pos + replays - 1}): {bucket * 1e3:7.2f} "
              f"ms/step, whole cache ({full}) {whole * 1e3:7.2f} ms/step ({whole / bucket:.2f}x); KV read "
              f"{k * per_position / 1e6:.0f} MB vs {full * per_position / 1e6:.0f} MB", flush=True)
    for j in list(b.jobs):
        b.remove(j)


def scale(shape: str, slots: int = 64, steps: int = 20) -> None:
    lm = _served_lm(shape)
    cfg = lm.cfg
    frames = int(cfg.segment_duration * 50)
    asked, slots = slots, fit_slots(lm, slots, frames, DEV, 0.9, shape, max_cond_len=256)
    torch.cuda.reset_peak_memory_stats()
    b = DecodeBatch(lm, slots, frames, max_cond_len=256)  # as the engine allocates it on a GPU
    kv = sum(t.numel() * t.element_size() for t in b.cache.tensors()) / 1e9
    weights = sum(p.numel() * p.element_size() for p in lm.parameters()) / 1e9
    t0 = time.perf_counter()
    s = StaticSteps(b)
    s.prepare()
    torch.cuda.synchronize()
    capture = time.perf_counter() - t0
    print(f"[scale] {shape} bf16 slots={slots} (fit_slots allows {slots} of {asked}) frames={frames}: KV {kv:.1f} GB, "
          f"weights {weights:.1f} GB, {_graph_count(s)} captured in {capture:.1f} s, "
          f"allocated {torch.cuda.memory_allocated() / 1e9:.1f} GB", flush=True)

    def run(n: int, pos: int, static: bool, last_cond: int = 16) -> float:
        b.static = s if static else None
        _fill(b, n, pos, last_cond)
        b.step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            b.step()
        torch.cuda.synchronize()
        return steps / (time.perf_counter() - t0)

    pos = frames // 2
    for n in sorted({n for n in (1, 16, slots) if n <= slots}):
        st, dy = run(n, pos, True), run(n, pos, False)
        print(f"[scale] {shape} n={n:3d} at frame {pos}: graphs {st:7.1f} steps/s, dynamic {dy:7.1f} steps/s "
              f"({n * st:8.1f} / {n * dy:8.1f} clip-steps/s)", flush=True)
    full = run(slots, pos, True, last_cond=256)  # the batch filled to the fitted count, one prompt of 256 tokens
    free, total = torch.cuda.mem_get_info()
    print(f"[scale] {shape} filled: {slots} slots, one 256-token prompt, {full:.1f} steps/s, cache version "
          f"{b.cache.version} (graphs captured on {s.captured_version}), {free / 1e9:.1f} of {total / 1e9:.1f} GB "
          f"free", flush=True)
    print(f"[scale] {shape} peak allocated {torch.cuda.max_memory_allocated() / 1e9:.1f} GB", flush=True)


def main(argv: list[str]) -> None:
    chosen = argv or ["replays", "syncs", "mbd", "stale", "sdpa", "seed", "keys", "scale"]
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name() if DEV.type == 'cuda' else 'the CPU'}",
          flush=True)
    checks = {"recapture": [recapture], "replays": [replays], "syncs": [syncs], "mbd": [mbd_overlap],
              "stale": [stale], "sdpa": [sdpa], "seed": [seed], "keys": [keys],
              "scale": [lambda: scale("audiogen-medium"), lambda: scale("musicgen-large")]}
    for name in chosen:
        for fn in checks[name]:
            try:
                fn()
            except Exception:
                print(f"[{name}] FAILED:\n{traceback.format_exc()}", flush=True)
            if DEV.type == "cuda":
                torch.cuda.empty_cache()  # what the check held is gone once it returned


if __name__ == "__main__":
    main(sys.argv[1:])

"""GPU-only checks of soundry's engine (run by bench/gpu_check.sh; never run on a GPU yet), from the repo root:

    SOUNDRY_TEST_DEVICE=cuda python3 bench/gpu_checks.py [stale] [sdpa] [seed] [scale]   (default: all)

stale  tiny audiogen: CUDA graphs captured, a long prompt grows the condition cache, it leaves and the
       cache shrinks back into new tensors (the old ones kept and poisoned with NaN): the tokens must
       equal the eager static step's (issue 24, item 1; graphs are keyed on the cache's version)
sdpa   one layer of musicgen-large's shape: forward_cached under each SDPA backend vs MATH, with the
       engine's strided q/K/V, masked (static and dynamic key lengths) and unmasked (attention=lengths)
seed   rng=counter: a seed gives the same tokens on the CPU and on the GPU (fp32, top_k=250)
scale  audiogen-medium and musicgen-large, bf16 as served (mixed precision), 64 slots, the engine's real
       cache size: KV bytes, what engine.memory.fit_slots allows, capture time, graphs vs dynamic steps/s
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
from soundry.engine.generate import make_job  # noqa: E402
from soundry.engine.memory import fit_slots  # noqa: E402
from soundry.engine.static_steps import StaticSteps  # noqa: E402
from soundry.engine.windows import Window  # noqa: E402
from soundry.models.audiocraft.lm.kv_cache import KVCache  # noqa: E402
from soundry.models.audiocraft.lm.precision import keep_fp32_  # noqa: E402
from soundry.models.audiocraft.lm.transformer import TransformerLM  # noqa: E402
from soundry.models.audiocraft.shapes import lm_config  # noqa: E402

torch.set_grad_enabled(False)
DEV = torch.device("cuda")
LONG = " ".join(["dog barking in the distance while cars pass by"] * 12)  # > 64 T5 tokens


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


def scale(shape: str, slots: int = 64, steps: int = 20) -> None:
    cfg = lm_config(shape)
    with torch.device("meta"):
        lm = TransformerLM(cfg)
    lm = lm.to_empty(device=DEV).to(torch.bfloat16).eval()
    for name, p in lm.named_parameters():
        if "norm" in name and name.endswith("weight"):
            p.fill_(1.0)
        elif p.dim() == 1:
            p.zero_()
        else:
            p.normal_(0.0, p.shape[-1] ** -0.5)
    keep_fp32_(lm)  # what precision=bf16 serves
    frames = int(cfg.segment_duration * 50)
    allowed = fit_slots(lm, slots, frames, DEV, 0.9, shape)
    torch.cuda.reset_peak_memory_stats()
    b = DecodeBatch(lm, slots, frames)
    kv = sum(t.numel() * t.element_size() for t in b.cache.tensors()) / 1e9
    weights = sum(p.numel() * p.element_size() for p in lm.parameters()) / 1e9
    t0 = time.perf_counter()
    s = StaticSteps(b)
    s.prepare()
    torch.cuda.synchronize()
    capture = time.perf_counter() - t0
    print(f"[scale] {shape} bf16 slots={slots} (fit_slots allows {allowed}) frames={frames}: KV {kv:.1f} GB, "
          f"weights {weights:.1f} GB, buckets {s.buckets} captured in {capture:.1f} s, "
          f"allocated {torch.cuda.memory_allocated() / 1e9:.1f} GB", flush=True)

    def run(n: int, pos: int, static: bool) -> float:
        for j in list(b.jobs):
            b.remove(j)
        b.static = s if static else None
        for i in range(n):
            req = GenerationRequest("x", duration=frames / 50, seed=i, top_k=250, top_p=0.0)
            cond = torch.randn(2, 16, cfg.dim, device=DEV, dtype=torch.bfloat16)
            job = Job(req, [Window(frames, 0)], cond, torch.ones(2, 16, dtype=torch.bool, device=DEV),
                      torch.Generator(device=DEV).manual_seed(i))
            b.admit(job)
            job.step = pos
            b.steps[job.slot] = pos
        b.step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            b.step()
        torch.cuda.synchronize()
        return steps / (time.perf_counter() - t0)

    pos = frames // 2
    for n in sorted({1, 16, slots}):
        st, dy = run(n, pos, True), run(n, pos, False)
        print(f"[scale] {shape} n={n:3d} at frame {pos}: graphs {st:7.1f} steps/s, dynamic {dy:7.1f} steps/s "
              f"({n * st:8.1f} / {n * dy:8.1f} clip-steps/s)", flush=True)
    print(f"[scale] {shape} peak allocated {torch.cuda.max_memory_allocated() / 1e9:.1f} GB", flush=True)


def main(argv: list[str]) -> None:
    chosen = argv or ["stale", "sdpa", "seed", "scale"]
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}", flush=True)
    checks = {"stale": [stale], "sdpa": [sdpa], "seed": [seed],
              "scale": [lambda: scale("audiogen-medium"), lambda: scale("musicgen-large")]}
    for name in chosen:
        for fn in checks[name]:
            try:
                fn()
            except Exception:
                print(f"[{name}] FAILED:\n{traceback.format_exc()}", flush=True)
            torch.cuda.empty_cache()  # what the check held is gone once it returned


if __name__ == "__main__":
    main(sys.argv[1:])

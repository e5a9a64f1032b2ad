"""Decode speed of soundry's engine vs. baselines on a real model shape with random weights.

    python bench/engine.py --shape musicgen-small --batch-sizes 1,4,8 --steps 24 [--int8] [--hf] [--compile]

Reports, side by side in one process: engine decode steps/s and seconds per 5 s clip for each batch
size (float32 with the service's CPU weight layout, oneDNN-packed linears, timed interleaved with
plain ``nn.Linear`` weights; int8 with --int8), the eager reference-style baseline (batch 1, cross-attention
recomputed each step, cache grown by concatenation), transformers' MusicGen ``generate`` (--hf, for
MusicGen shapes), and the memory-bandwidth floor: (weight bytes + KV bytes) per step over the
measured read bandwidth. Prints a table, then one JSON line. Text encoding and codec decoding are
left out of every row (they run outside the decode loop).

``--compile`` adds the engine's compiled CPU step (``soundry.engine.compiled_steps``, on the packed
weights) at each batch size, timed interleaved with the eager packed engine at that size (run by
run, so the machine's drift hits both alike), and reports the compile time of the graph that size
uses, cold (empty inductor cache) and warm (dynamo reset, inductor's on-disk cache kept: what a
restart pays). ``--torchao`` adds int8 through torchao's
``quantize_`` (if installed) beside ``torch.ao``'s ``quantize_dynamic``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.eager_baseline import EagerDecoder  # noqa: E402
from bench.machine import cpu_flags, parse_args  # noqa: E402
from soundry.engine.batch import DecodeBatch, Job  # noqa: E402
from soundry.engine.compiled_steps import CompiledSteps  # noqa: E402
from soundry.engine.request import GenerationRequest  # noqa: E402
from soundry.engine.static_steps import StaticSteps  # noqa: E402
from soundry.engine.windows import Window  # noqa: E402
from soundry.models.audiocraft.lm.packed import is_packed  # noqa: E402
from soundry.models.audiocraft.lm.precision import DTYPES, apply_precision, describe_lm_precision  # noqa: E402
from soundry.models.audiocraft.lm.quantize import quantize_lm  # noqa: E402
from soundry.models.audiocraft.lm.transformer import TransformerLM, init_random_  # noqa: E402
from soundry.models.audiocraft.shapes import SHAPES, lm_config  # noqa: E402

FRAME_RATE = 50
CLIP_SECONDS = 5.0
COND_LEN = 16


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_batch(lm: TransformerLM, batch: int, steps: int, device, static: bool = False) -> DecodeBatch:
    b = DecodeBatch(lm, batch, steps + 8, device=device)
    if static:  # bucketed static steps; CUDA graphs on a GPU (captured before timing)
        b.static = StaticSteps(b)
        b.static.prepare()
    return b


def engine_steps_per_s(lm: TransformerLM, batch: int, steps: int, repeats: int, device,
                       static: bool = False) -> float:
    make = partial(make_batch, lm, batch, steps, device, static)
    return interleaved_steps_per_s({"engine": make}, batch, steps, repeats, device)["engine"]


def compiled_batch(lm: TransformerLM, batch: int, steps: int, cache_dir: Path) -> tuple[DecodeBatch, float, float]:
    """A DecodeBatch whose step for ``batch`` requests is compiled; returns it with the cold and warm
    compile seconds (warm: dynamo's in-memory state reset, inductor's on-disk cache kept)."""
    b = DecodeBatch(lm, batch, steps + 8, device="cpu")
    times = []
    for _ in range(2):
        torch._dynamo.reset()
        t0 = time.perf_counter()
        b.static = CompiledSteps(b, cache_dir=cache_dir).compile_now(batch)
        times.append(time.perf_counter() - t0)
    return b, times[0], times[1]


def interleaved_steps_per_s(makers: dict, batch: int, steps: int, repeats: int, device) -> dict[str, float]:
    """Median steps/s of each variant (name -> a function making its DecodeBatch, or a batch),
    timed run by run in turn after one warm-up run each."""
    batches = {name: (m() if callable(m) else m) for name, m in makers.items()}
    lm = next(iter(batches.values())).lm
    dim = lm.cfg.dim
    dtype = torch.float32 if describe_lm_precision(lm) == "int8" else next(lm.parameters()).dtype
    samples: dict[str, list[float]] = {name: [] for name in batches}

    def run(b: DecodeBatch) -> float:
        for job in list(b.jobs):
            b.remove(job)
        for i in range(batch):
            req = GenerationRequest(prompt=f"p{i}", duration=steps / FRAME_RATE, top_k=250, top_p=0.0, seed=i)
            cond = torch.randn(2, COND_LEN, dim, device=device, dtype=dtype)
            gen = torch.Generator(device=device).manual_seed(i)
            b.admit(Job(req, [Window(steps + 4, 0)], cond, torch.ones(2, COND_LEN, dtype=torch.bool, device=device),
                        gen))
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            b.step()
        _sync(device)
        return time.perf_counter() - t0

    for r in range(repeats + 1):
        for name, b in batches.items():
            elapsed = run(b)
            if r:
                samples[name].append(steps / elapsed)
    return {name: statistics.median(v) for name, v in samples.items()}


def eager_steps_per_s(lm: TransformerLM, steps: int, repeats: int) -> float:
    dec = EagerDecoder(lm)
    cond = torch.randn(2, COND_LEN, lm.cfg.dim)
    return steps / timed(lambda: dec.run(steps, cond), repeats)


def hf_steps_per_s(shape: str, steps: int, repeats: int) -> float:
    """transformers' MusicgenForConditionalGeneration.generate on the same decoder shape (random weights)."""
    from transformers import (
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )

    s = SHAPES[shape]
    dec = MusicgenDecoderConfig(vocab_size=2048, hidden_size=s["dim"], num_hidden_layers=s["num_layers"],
                                num_attention_heads=s["num_heads"], ffn_dim=4 * s["dim"], num_codebooks=4,
                                max_position_embeddings=4096)
    text = T5Config(vocab_size=160, d_model=48, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    audio = EncodecConfig(sampling_rate=32000, audio_channels=1, num_filters=4, upsampling_ratios=[8, 5, 4, 4],
                          codebook_size=2048, codebook_dim=16, hidden_size=16, target_bandwidths=[2.2],
                          num_lstm_layers=1, chunk_length_s=None, overlap=None)
    cfg = MusicgenConfig(text_encoder=text.to_dict(), audio_encoder=audio.to_dict(), decoder=dec.to_dict())
    model = MusicgenForConditionalGeneration(cfg).eval()
    ids = torch.randint(2, 150, (1, COND_LEN))

    def run():
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=250,
                           guidance_scale=3.0, max_new_tokens=steps)

    return steps / timed(run, repeats)


def read_bandwidth(device, mbytes: int = 1024) -> float:
    """Bytes per second read by a reduction over a large random tensor (what a decode step does
    with its weights: read each once)."""
    n = mbytes * 2**20 // 4
    src = torch.randn(n, device=device)
    t = timed(lambda: (src.sum(), _sync(device)), 5)
    return src.numel() * 4 / t


def step_bytes(lm: TransformerLM, batch: int, positions: int, weight_bytes: int, kv_bytes: int) -> tuple[int, int]:
    """(weight bytes, KV bytes) one decode step must read, with weight and KV elements of the given
    sizes. Cross-attention K/V projections are computed once per request, so their weights are not
    read per step; embeddings read 4 rows."""
    cfg = lm.cfg
    D = cfg.dim
    per_layer = (3 * D * D + D * D) + (D * D + D * D) + 2 * 4 * D * D  # self qkv+out, cross q+out, FF
    weights = (cfg.num_layers * per_layer + cfg.n_q * cfg.card * D) * weight_bytes
    kv = 2 * cfg.num_layers * (2 * batch) * (positions + COND_LEN) * D * kv_bytes
    return weights, kv


def torchao_int8(lm: TransformerLM) -> TransformerLM:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    q = copy.deepcopy(lm)
    quantize_(q, Int8DynamicActivationInt8WeightConfig())
    return q


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="musicgen-small", choices=sorted(SHAPES))
    ap.add_argument("--batch-sizes", default="1,4,8")
    ap.add_argument("--steps", type=int, default=24, help="decode steps timed per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    ap.add_argument("--int8", action="store_true", help="also measure int8 dynamic quantisation (CPU)")
    ap.add_argument("--hf", action="store_true", help="also measure transformers' MusicGen generate")
    ap.add_argument("--no-eager", action="store_true")
    ap.add_argument("--static", choices=["auto", "on", "off"], default="auto",
                    help="bucketed static steps (CUDA graphs on a GPU); auto = on for CUDA, as the engine does")
    ap.add_argument("--compile", action="store_true",
                    help="also the compiled CPU step at each batch size (interleaved with the eager engine)")
    ap.add_argument("--compile-cache", default=None, help="inductor cache dir (default: a fresh temporary one)")
    ap.add_argument("--torchao", action="store_true", help="also int8 through torchao's quantize_ (batch 1)")
    ap.add_argument("--plain", choices=["also", "no", "only"], default="also",
                    help="engine rows with plain nn.Linear weights beside the packed (service) layout")
    a = parse_args(ap, argv)
    device = torch.device(a.device)
    dtype = getattr(torch, a.dtype) if a.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    batches = [int(b) for b in a.batch_sizes.split(",")]

    cfg = lm_config(a.shape)
    lm = TransformerLM(cfg).eval()
    init_random_(lm, seed=0)
    rows, results = [], {"shape": a.shape, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
                         "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
                         "steps": a.steps, "cpu_flags": cpu_flags()}
    bw_start = read_bandwidth(device)
    clip_steps = int(CLIP_SECONDS * FRAME_RATE) + max(cfg.delays)
    avg_pos = clip_steps // 2

    elt = torch.empty((), dtype=dtype).element_size()  # the engine rows' weights and KV cache

    def add(name, batch, sps, weight_bytes=4, kv_bytes=4):  # baselines: fp32; int8: 1-byte weights, fp32 KV
        w, kv = step_bytes(lm, batch, avg_pos, weight_bytes, kv_bytes)
        rows.append((name, batch, sps, w + kv))

    if not a.no_eager and device.type == "cpu":
        add("eager baseline (fp32)", 1, eager_steps_per_s(lm, a.steps, a.repeats))
    if a.hf and a.shape.startswith("musicgen") and device.type == "cpu":
        add("transformers MusicGen generate", 1, hf_steps_per_s(a.shape, a.steps, a.repeats))
    precision = next(name for name, dt in DTYPES.items() if dt == dtype)
    lm_dev = apply_precision(copy.deepcopy(lm), precision, device, packed=False)  # plain nn.Linear weights
    # The service's layout: on the CPU in fp32/bf16, linears prepacked for oneDNN (soundry.models.audiocraft.lm.packed).
    lm_packed = apply_precision(copy.deepcopy(lm), precision, device) if a.plain != "only" else None
    lm_packed = lm_packed if lm_packed is not None and is_packed(lm_packed) else None
    static = a.static == "on" or (a.static == "auto" and torch.device(device).type == "cuda")
    label = f"soundry engine ({results['dtype']}{', static/graphs' if static else ''})"
    compile_rows = a.compile and device.type == "cpu" and dtype == torch.float32 and lm_packed is not None
    cache_dir = Path(a.compile_cache or tempfile.mkdtemp(prefix="soundry-inductor-"))
    for b in batches:
        if not compile_rows:
            makers = {}
            if lm_packed is not None:
                makers[label.replace(")", ", packed)")] = partial(make_batch, lm_packed, b, a.steps, device, static)
            if lm_packed is None or a.plain == "also":
                plain_label = label.replace(")", ", plain nn.Linear)") if lm_packed is not None else label
                makers[plain_label] = partial(make_batch, lm_dev, b, a.steps, device, static)
            for name, sps in interleaved_steps_per_s(makers, b, a.steps, a.repeats, device).items():
                add(name, b, sps, elt, elt)
            continue
        cb, cold, warm = compiled_batch(lm_packed, b, a.steps, cache_dir)
        results.setdefault("compile_seconds", []).append({"batch": b, "cold": round(cold, 1), "warm": round(warm, 1)})
        eager_batch = DecodeBatch(lm_packed, b, a.steps + 8, device=device)
        sps = interleaved_steps_per_s({"eager": eager_batch, "compiled": cb}, b, a.steps, a.repeats, device)
        add(label.replace(")", ", packed)"), b, sps["eager"], elt, elt)
        add("soundry engine (float32, packed, compiled)", b, sps["compiled"], elt, elt)
    if a.int8 and device.type == "cpu":
        qlm = quantize_lm(copy.deepcopy(lm).float(), "int8")
        for b in batches:
            add("soundry engine (int8)", b, engine_steps_per_s(qlm, b, a.steps, a.repeats, device), 1)
    if a.torchao and device.type == "cpu":
        add("engine int8 via torchao quantize_", 1,
            engine_steps_per_s(torchao_int8(lm.float()), 1, a.steps, a.repeats, device), 1)

    # The floor uses the higher of two bandwidth readings (before and after the runs): this VM's memory
    # bandwidth drifts, and the higher reading gives the stricter floor.
    bw_end = read_bandwidth(device)
    bw = max(bw_start, bw_end)
    results["read_bandwidth_GBps"] = round(bw / 1e9, 2)
    results["read_bandwidth_start_end_GBps"] = [round(bw_start / 1e9, 2), round(bw_end / 1e9, 2)]
    print(f"shape {a.shape} on {device} ({results['dtype']}, {results['threads']} threads), read bandwidth "
          f"{bw / 1e9:.1f} GB/s (start {bw_start / 1e9:.1f}, end {bw_end / 1e9:.1f}), {a.steps} steps x {a.repeats} "
          f"runs (median); clip = {CLIP_SECONDS:g} s = {clip_steps} steps; cpu flags: {results['cpu_flags']}")
    print(f"{'implementation':42s} {'batch':>5s} {'steps/s':>9s} {'clip-steps/s':>13s} {'s/clip':>8s} "
          f"{'floor steps/s':>14s} {'of floor':>9s}")
    results["rows"] = []
    for name, b, sps, nbytes in rows:
        floor = bw / nbytes
        print(f"{name:42s} {b:5d} {sps:9.2f} {sps * b:13.2f} {clip_steps / sps:8.2f} {floor:14.2f} "
              f"{sps / floor:8.0%}")
        results["rows"].append({"name": name, "batch": b, "steps_per_s": round(sps, 3),
                                "clips_steps_per_s": round(sps * b, 3), "seconds_per_clip": round(clip_steps / sps, 3),
                                "bandwidth_floor_steps_per_s": round(floor, 3)})
    for c in results.get("compile_seconds", []):
        print(f"compile for batch {c['batch']}: cold {c['cold']} s, warm (inductor cache on disk) {c['warm']} s")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()

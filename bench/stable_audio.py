"""Stable Audio: seconds per denoising step of soundry's diffusion batch against diffusers' own pipeline, on the
same random-weight networks of a release's shape, in one process; prints a table and one JSON line.

    .venv/bin/python bench/stable_audio.py --family sa3 --batch-sizes 1,4,8 --steps 4
    .venv/bin/python bench/stable_audio.py --family sao --layers 4 --batch-sizes 1,4 --steps 3   # a CPU-sized run
    .venv/bin/python bench/stable_audio.py --layers 4 --batch-sizes '' --steps 3 --mixed 8 --mixed-durations 2,4,6

Shapes: ``sao`` is Stable Audio Open 1.0's (DiT 24 layers × 1536, 1024 latent frames of 64 channels = 47.55 s,
T5-base, Oobleck 44.1 kHz); ``sa3`` is Stable Audio 3 small as assumed here (DiT 16 layers × 1024, 16 heads,
64 memory tokens; T5Gemma b; SAME patch 256 × stride 16, 256 latent channels, 44.1 kHz): diffusers' class defaults
are the medium DiT (24 × 1536); ``--layers``/``--width`` override. Both sides run the same modules (the pipeline is
built from the objects soundry steps), batch B = B prompts with one generator each, guidance as given (SAO 7.0 with
its all-zero unconditional rows; SA3 1.0, no guidance), fp32 on the CPU.

Rows: ``diffusers`` — the pipeline called with B prompts and a list of B generators, its per-step time taken from
its step callback; ``soundry`` — ``DiffusionBatch.step`` over B jobs. Per-step figures are medians over the steps
after the first, over ``--repeats`` interleaved runs. ``s/clip``: a whole call (encode, steps, decode) / batch.
``--decode-once``: the per-step rows' calls leave out the decode, and one clip's decode (the same VAE call on both
sides) is timed and added to both s/clip (for a loaded CPU).

Mixed arrivals (``--mixed 8``): requests of durations drawn from ``--mixed-durations``, arriving at fixed seeded
times over ``--mixed-spread`` seconds, (a) submitted to a running ``DiffusionEngine`` (its loop thread and decode
thread, as the service runs it), (b) each run by diffusers alone in arrival order (one worker thread, each call
starting once its request has arrived and the previous call has finished: a simple server), (c) diffusers' own
batched call of all of them, started when the last has arrived, every row at the longest duration (one duration per
call). Makespan (the last finish since the first arrival) and mean latency (finish − arrival); the largest
difference between a request's final latents from (a) and (b) (same seed) is printed as a check.
``--lengths D1,D2,...`` (SA3): one DiT step over rows of those durations, grouped by latent length (soundry) against
one batch padded to the longest with a key mask in the self-attention (see docs/stable-audio.md), timed interleaved.

Memory: SAO decodes 47.55 s per clip whatever the duration; diffusers' batched Oobleck decode at batch 4 went past
11 GB and was OOM-killed on a shared 23 GB machine, so size ``--batch-sizes`` to the machine.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import threading
import time

import torch


def build_sao(layers: int, width_heads: int):
    from diffusers import (
        AutoencoderOobleck,
        CosineDPMSolverMultistepScheduler,
        StableAudioDiTModel,
        StableAudioPipeline,
        StableAudioProjectionModel,
    )
    from transformers import T5Config, T5EncoderModel

    tok = _tokenizer("sao", 128)
    text = T5EncoderModel(T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
                                   feed_forward_proj="relu")).eval()
    proj = StableAudioProjectionModel(text_encoder_dim=768, conditioning_dim=768, min_value=0, max_value=512).eval()
    dit = StableAudioDiTModel(sample_size=1024, in_channels=64, num_layers=layers, attention_head_dim=64,
                              num_attention_heads=width_heads, num_key_value_attention_heads=width_heads // 2,
                              out_channels=64, cross_attention_dim=768, time_proj_dim=256,
                              global_states_input_dim=1536, cross_attention_input_dim=768).eval()
    vae = AutoencoderOobleck().eval()  # the release's defaults: 128 channels, ratios 2,4,4,8,8, 64 latents, 44.1 kHz
    sched = CosineDPMSolverMultistepScheduler(sigma_min=0.3, sigma_max=500.0, sigma_data=1.0,
                                              sigma_schedule="exponential", solver_order=2,
                                              prediction_type="v_prediction", final_sigmas_type="zero")
    pipe = StableAudioPipeline(vae=vae, text_encoder=text, projection_model=proj, tokenizer=tok, transformer=dit,
                               scheduler=sched)
    return pipe, {"transformer": dit, "vae": vae, "text_encoder": text, "tokenizer": tok, "projection_model": proj,
                  "scheduler": dict(sched.config)}


def build_sa3(layers: int, width_heads: int):
    from diffusers import AutoencoderSAME, FlowMatchEulerDiscreteScheduler, StableAudio3DiTModel, StableAudio3Pipeline
    from diffusers.pipelines.stable_audio_3.modeling_stable_audio_3 import StableAudio3DurationEmbedder
    from transformers import T5GemmaConfig, T5GemmaEncoderModel
    from transformers.models.t5gemma.configuration_t5gemma import T5GemmaModuleConfig

    tok = _tokenizer("sa3", 256)
    mod = T5GemmaModuleConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                              num_attention_heads=12, num_key_value_heads=12, head_dim=64, query_pre_attn_scalar=64,
                              sliding_window=4096, layer_types=["sliding_attention", "full_attention"] * 6)
    text = T5GemmaEncoderModel(T5GemmaConfig(encoder=mod.to_dict(), decoder=mod.to_dict(), is_encoder_decoder=False,
                                             vocab_size=32000)).eval()
    dur = StableAudio3DurationEmbedder(output_dim=768).eval()
    dit = StableAudio3DiTModel(embed_dim=64 * width_heads, depth=layers, num_heads=width_heads).eval()
    vae = AutoencoderSAME().eval()
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0, stochastic_sampling=True)
    pipe = StableAudio3Pipeline(vae=vae, text_encoder=text, tokenizer=tok, duration_embedder=dur, transformer=dit,
                                scheduler=sched)
    return pipe, {"transformer": dit, "vae": vae, "text_encoder": text, "tokenizer": tok, "duration_embedder": dur,
                  "scheduler": dict(sched.config)}


def _tokenizer(kind: str, max_length: int):
    """The tiny reference folder's tokenizer (ids within any vocabulary here), padded to the release's length."""
    from pathlib import Path

    import transformers

    folder = Path(__file__).resolve().parent.parent / "tests" / "data" / (
        "stable-audio-open-tiny" if kind == "sao" else "stable-audio-3-tiny") / "tokenizer"
    cls = transformers.T5Tokenizer if kind == "sao" else transformers.GemmaTokenizer
    tok = cls.from_pretrained(str(folder), local_files_only=True)
    tok.model_max_length = max_length
    return tok


PROMPTS = ["dog barking in the distance", "rain falling on a tin roof", "calm piano melody", "ocean waves",
           "motorcycle engine revving", "birds chirping in a forest", "a crowd cheering", "footsteps on gravel"]


def diffusers_call(pipe, model, kind, prompts, seeds, steps, duration, guidance, decode="per-clip"):
    """One pipeline call for ``prompts`` (one generator per prompt, seeded ``seeds``) at ``duration``: (per-step
    seconds from its step callback, the call's total seconds, the final latents). ``decode``: ``batched`` — the
    pipeline's own decode of the whole batch; ``per-clip`` — the pipeline returns latents (``output_type="latent"``)
    and each clip is decoded alone by the same VAE call, cut (and, SA3, clamped) as the pipeline cuts, timed in the
    total (the batched Oobleck decode of 47.55 s clips does not fit a shared 23 GB machine at batch 4)."""
    stamps = []
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    kw = dict(num_inference_steps=steps, guidance_scale=guidance, generator=gens,
              output_type="pt" if decode == "batched" else "latent")
    t0 = time.perf_counter()
    if kind == "sao":
        out = pipe(prompts, audio_end_in_s=duration, callback=lambda *a: stamps.append(time.perf_counter()), **kw)
    else:
        def cb(p, i, t, kwargs):
            stamps.append(time.perf_counter())
            return kwargs
        out = pipe(prompts, duration=duration, callback_on_step_end=cb, **kw)
    latents = None
    if decode != "batched":
        latents = out.audios
        for i in range(latents.shape[0] if decode == "per-clip" else 0):
            model.decode(latents[i:i + 1], duration)
    total = time.perf_counter() - t0
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)], total, latents


def diffusers_steps(pipe, model, kind, batch, steps, duration, guidance, decode="per-clip"):
    """Per-step seconds of one pipeline call of ``batch`` prompts (from its step callback) and its total seconds."""
    per, total, _ = diffusers_call(pipe, model, kind, (PROMPTS * 2)[:batch], list(range(batch)), steps, duration,
                                   guidance, decode)
    return per, total


def soundry_steps(model, batch, steps, duration, guidance, decode=True):
    from soundry.engine.diffusion.batch import DiffusionBatch, make_job

    t0 = time.perf_counter()
    b = DiffusionBatch(model)
    jobs = [make_job(model, str(i), (PROMPTS * 2)[i], duration, guidance, steps, i) for i in range(batch)]
    for j in jobs:
        b.admit(j)
    per = []
    while b.jobs:
        s = time.perf_counter()
        b.step()
        per.append(time.perf_counter() - s)
    for j in jobs if decode else []:
        model.decode(j.x, duration)
    return per[1:], time.perf_counter() - t0


def arrivals(n: int, spread: float, durations: list[float], seed: int) -> list[tuple[float, float]]:
    """``n`` (arrival second, duration) pairs, fixed by ``seed``: arrivals uniform over [0, spread] (sorted, the
    first at 0), durations drawn from ``durations``."""
    rng = random.Random(seed)
    times = sorted(rng.uniform(0, spread) for _ in range(n))
    return [(t - times[0], rng.choice(durations)) for t in times]


def _in_thread(fn, *args):
    """``fn(*args)`` on a fresh worker thread, as a server runs it (and as the engine's loop thread runs soundry):
    on a loaded CPU, torch's intra-op threads behave differently off the main thread, so both sides get the same."""
    out: list = []
    th = threading.Thread(target=lambda: out.append(fn(*args)))
    th.start()
    th.join()
    return out[0]


def _wait_until(t: float) -> None:
    while (d := t - time.perf_counter()) > 0:
        time.sleep(min(d, 0.05))


def mixed_soundry(model, plan, steps, guidance):
    """The requests submitted to a running ``DiffusionEngine`` (its own loop thread and decode thread, as the
    service runs it) at their arrival times; (finish second of each, relative to the start; final latents)."""
    from soundry.engine.diffusion.engine import DiffusionEngine
    from soundry.engine.request import GenerationRequest

    engine = DiffusionEngine(model, max_batch=16).start()
    done: dict[int, float] = {}
    futures = []
    try:
        t0 = time.perf_counter()
        for i, (at, dur) in enumerate(plan):
            _wait_until(t0 + at)
            req = GenerationRequest(PROMPTS[i % len(PROMPTS)], duration=dur, cfg_coef=guidance, seed=i, steps=steps)
            fut = engine.submit(req)
            fut.add_done_callback(lambda f, i=i: done.__setitem__(i, time.perf_counter() - t0))
            futures.append(fut)
        results = [f.result() for f in futures]
        while len(done) < len(plan):  # the callbacks run just after the futures complete
            time.sleep(0.001)
        sizes = dict(engine.stats.batch_sizes)
    finally:
        engine.stop()
    return [done[i] for i in range(len(plan))], [r.tokens for r in results], sizes


def mixed_diffusers_sequential(pipe, model, kind, plan, steps, guidance):
    """A simple server: one pipeline call per request, in arrival order, each starting when it has arrived and
    the previous one has finished; decode as the pipeline does (batch 1)."""
    finish, latents, t0 = [], [], time.perf_counter()
    for i, (at, dur) in enumerate(plan):
        _wait_until(t0 + at)
        _, _, lat = diffusers_call(pipe, model, kind, [PROMPTS[i % len(PROMPTS)]], [i], steps, dur, guidance)
        finish.append(time.perf_counter() - t0)
        latents.append(lat[0])
    return finish, latents


def mixed_diffusers_batched(pipe, model, kind, plan, steps, guidance, decode):
    """Diffusers' own batched call of all the requests: it starts when the last one has arrived, every row at the
    longest duration (one duration per call); every request finishes when the call does."""
    t0 = time.perf_counter()
    _wait_until(t0 + plan[-1][0])
    longest = max(d for _, d in plan)
    diffusers_call(pipe, model, kind, [PROMPTS[i % len(PROMPTS)] for i in range(len(plan))], list(range(len(plan))),
                   steps, longest, guidance, decode)
    end = time.perf_counter() - t0
    return [end] * len(plan)


class _MaskedSelfAttn:
    """SA3's self-attention processor with a key mask (``mask`` [B, S] bool, True = a real token): what a padded
    batch needs so that no row attends to another row's padding. Everything else in SA3's DiT is per token (1×1
    convs, linears, RMS norms, the feed-forward, cross-attention from each query) or per row (the AdaLN
    modulation), and right-padding keeps every real token's rotary position, so a masked padded row computes the
    same sums as the row alone, up to float rounding. Bench-only: soundry groups rows by length."""

    mask: torch.Tensor | None = None

    def __call__(self, attn, hidden_states, rope):
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.transformers.transformer_stable_audio3 import _apply_rotary_partial

        def heads(x):
            return x.unflatten(-1, (attn.heads, attn.dim_heads))

        m = None if self.mask is None else self.mask[:, None, None, :]
        if attn.use_differential:
            q1, q2, k1, k2, v = map(heads, attn.to_qkv(hidden_states).chunk(5, dim=-1))
            q1, q2, k1, k2 = attn.q_norm(q1), attn.q_norm(q2), attn.k_norm(k1), attn.k_norm(k2)
            q1, q2, k1, k2 = (_apply_rotary_partial(t, rope) for t in (q1, q2, k1, k2))
            out = dispatch_attention_fn(q1, k1, v, attn_mask=m) - dispatch_attention_fn(q2, k2, v, attn_mask=m)
        else:
            q, k, v = map(heads, attn.to_qkv(hidden_states).chunk(3, dim=-1))
            q, k = _apply_rotary_partial(attn.q_norm(q), rope), _apply_rotary_partial(attn.k_norm(k), rope)
            out = dispatch_attention_fn(q, k, v, attn_mask=m)
        return attn.to_out(out.flatten(2, 3))


def grouped_vs_masked(model, durations: list[float], repeats: int) -> dict:
    """One DiT evaluation of rows of ``durations`` (SA3, one row each): grouped by latent length (soundry: one
    call per length) against one call on the rows right-padded to the longest with the self-attention key mask;
    seconds (medians, interleaved) and the largest difference of a real frame's output between the two."""
    dit, mem = model.transformer, model.transformer.config.num_memory_tokens
    conds = [model.encode_prompt(PROMPTS[i % len(PROMPTS)], d, 1.0) for i, d in enumerate(durations)]
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(1, model.latent_channels, model.latent_length(d), generator=gen) for d in durations]
    ts = [torch.tensor([0.9 - 0.1 * i]) for i in range(len(durations))]

    def grouped():
        out: list = [None] * len(xs)
        by_len: dict[int, list[int]] = {}
        for i, x in enumerate(xs):
            by_len.setdefault(x.shape[-1], []).append(i)
        for rows in by_len.values():
            y = model.denoise(torch.cat([xs[i] for i in rows]), torch.cat([ts[i] for i in rows]),
                              torch.cat([conds[i].context for i in rows]),
                              torch.cat([conds[i].global_states for i in rows]),
                              torch.cat([conds[i].mask for i in rows]))
            for k, i in enumerate(rows):
                out[i] = y[k:k + 1]
        return out

    longest = max(x.shape[-1] for x in xs)
    proc = _MaskedSelfAttn()
    proc.mask = torch.stack([torch.arange(mem + longest) < mem + x.shape[-1] for x in xs])
    padded = torch.cat([torch.nn.functional.pad(x, (0, longest - x.shape[-1])) for x in xs])

    def masked():
        saved = [b.self_attn.processor for b in dit.transformer_blocks]
        for b in dit.transformer_blocks:
            b.self_attn.processor = proc
        try:
            y = model.denoise(padded, torch.cat(ts), torch.cat([c.context for c in conds]),
                              torch.cat([c.global_states for c in conds]), torch.cat([c.mask for c in conds]))
        finally:
            for b, p in zip(dit.transformer_blocks, saved, strict=True):
                b.self_attn.processor = p
        return [y[i:i + 1, :, :x.shape[-1]] for i, x in enumerate(xs)]

    g_t, m_t, diff = [], [], 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        g = grouped()
        g_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        m = masked()
        m_t.append(time.perf_counter() - t)
        diff = max(diff, max(float((a - b).abs().max()) for a, b in zip(g, m, strict=True)))
    frames = [x.shape[-1] for x in xs]
    return {"durations": durations, "latent_frames": frames, "groups": len(set(frames)),
            "grouped_s": statistics.median(g_t), "masked_padded_s": statistics.median(m_t),
            "frames_computed_grouped": sum(frames) + mem * len(frames), "frames_computed_masked": (longest + mem)
            * len(frames), "max_abs_diff": diff}


def describe(model, layers: int, heads: int, duration: float) -> str:
    """The shapes this run measures, in words (parameter counts from the modules themselves)."""
    def m(mod) -> str:
        return f"{sum(p.numel() for p in mod.parameters()) / 1e6:.0f} M"

    dit = model.transformer
    if model.kind == "sao":
        frames = f"{model.latent_length(duration)} latent frames (its full window, any duration)"
        extra = f"T5 {m(model.text_encoder)} (128 tokens), Oobleck {m(model.vae)}"
    else:
        frames = (f"{model.latent_length(duration)} latent frames at {duration:g} s "
                  f"(+{dit.config.num_memory_tokens} memory tokens), differential attention")
        extra = f"T5Gemma encoder {m(model.text_encoder)} (256 tokens), SAME {m(model.vae)}"
    return (f"{model.kind} DiT {layers} layers x {64 * heads} ({heads} heads of 64), {m(dit)} params, "
            f"{model.latent_channels} latent channels, {frames}; {extra}; fp32, random weights")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", choices=["sao", "sa3"], default="sa3")
    ap.add_argument("--layers", type=int, help="DiT depth (default: the release's: SAO 24, SA3 small 16)")
    ap.add_argument("--heads", type=int, help="DiT heads of 64 (default: SAO 24, SA3 small 16)")
    ap.add_argument("--batch-sizes", default="1,4,8", help="the per-step rows ('' for none)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds (SAO's DiT always runs its full window)")
    ap.add_argument("--guidance", type=float, help="default: SAO 7.0, SA3 1.0")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--diffusers-decode", choices=["per-clip", "batched"], default="per-clip",
                    help="diffusers' batched calls: decode each clip alone (default; memory) or the pipeline's own")
    ap.add_argument("--decode-once", action="store_true",
                    help="per-step rows: neither side decodes; one clip's decode (the same VAE call on both sides) "
                    "is timed once per repeat and its median added to both sides' s/clip (a loaded CPU)")
    ap.add_argument("--mixed", type=int, default=8, help="requests of the mixed-arrival scenario (0: none)")
    ap.add_argument("--mixed-spread", type=float, default=3.0, help="seconds over which they arrive")
    ap.add_argument("--mixed-durations", help="durations drawn from (default: SA3 3,5,10; SAO 5,10,20)")
    ap.add_argument("--mixed-seed", type=int, default=29)
    ap.add_argument("--mixed-repeats", type=int, default=1)
    ap.add_argument("--no-mixed-batched", action="store_true", help="leave out diffusers' batched call of them")
    ap.add_argument("--lengths", help="SA3: durations of rows for one DiT step grouped by length vs padded and "
                    "masked, e.g. 2,4,6,10,10,3,5,8 ('' for none)")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    sao = a.family == "sao"
    layers, heads = a.layers or (24 if sao else 16), a.heads or (24 if sao else 16)
    guidance = a.guidance if a.guidance is not None else (7.0 if sao else 1.0)
    pipe, parts = (build_sao if sao else build_sa3)(layers, heads)
    pipe.set_progress_bar_config(disable=True)
    from soundry.models.stable_audio.model import StableAudioModel

    model = StableAudioModel(f"{a.family}-random", a.family, parts)
    duration = min(a.duration, model.max_duration)
    shape = describe(model, layers, heads, duration)
    print(shape, flush=True)
    rows, decodes = [], []
    for bs in [int(x) for x in a.batch_sizes.split(",") if x]:
        d_per, s_per, d_tot, s_tot = [], [], [], []
        for _ in range(a.repeats):  # interleaved, so that a busy machine slows both sides alike
            per, total = diffusers_steps(pipe, model, a.family, bs, a.steps, duration, guidance,
                                         "none" if a.decode_once else a.diffusers_decode)
            d_per += per
            d_tot.append(total)
            per, total = soundry_steps(model, bs, a.steps, duration, guidance, decode=not a.decode_once)
            s_per += per
            s_tot.append(total)
            if a.decode_once and len(decodes) < a.repeats:
                lat = torch.randn(1, model.latent_channels, model.latent_length(duration))
                t = time.perf_counter()
                model.decode(lat, duration)
                decodes.append(time.perf_counter() - t)
        dec = statistics.median(decodes) if decodes else 0.0
        rows.append({"batch": bs, "diffusers_s_per_step": statistics.median(d_per),
                     "soundry_s_per_step": statistics.median(s_per),
                     "diffusers_s_per_clip": statistics.median(d_tot) / bs + dec,
                     "soundry_s_per_clip": statistics.median(s_tot) / bs + dec, "decode_s_added": dec})
        print(f"  batch {bs}: {rows[-1]}", flush=True)
    mixed = None
    if a.mixed:
        durs = [float(x) for x in (a.mixed_durations or ("5,10,20" if sao else "3,5,10")).split(",")]
        plan = arrivals(a.mixed, a.mixed_spread, [min(d, model.max_duration) for d in durs], a.mixed_seed)
        runs: dict[str, list[tuple[float, float]]] = {"diffusers per request": [], "soundry engine": [],
                                                      "diffusers batched": []}
        drift, sizes = 0.0, {}
        for _ in range(a.mixed_repeats):  # interleaved
            fin, lat_d = _in_thread(mixed_diffusers_sequential, pipe, model, a.family, plan, a.steps, guidance)
            runs["diffusers per request"].append(_latency(plan, fin))
            fin, lat_s, sizes = mixed_soundry(model, plan, a.steps, guidance)
            runs["soundry engine"].append(_latency(plan, fin))
            drift = max(drift, max(float((x.cpu() - y.cpu()).abs().max()) for x, y in zip(lat_d, lat_s, strict=True)))
            if not a.no_mixed_batched:
                fin = _in_thread(mixed_diffusers_batched, pipe, model, a.family, plan, a.steps, guidance,
                                 a.diffusers_decode)
                runs["diffusers batched"].append(_latency(plan, fin))
        runs = {k: v for k, v in runs.items() if v}
        mixed = {"plan": [{"arrival_s": round(t, 3), "duration_s": d} for t, d in plan],
                 "latent_lengths": [model.latent_length(d) for _, d in plan],
                 "soundry_step_batch_sizes": sizes, "max_abs_latent_diff_soundry_vs_diffusers": drift,
                 "rows": {k: {"makespan_s": statistics.median(m for m, _ in v),
                              "mean_latency_s": statistics.median(lat for _, lat in v)} for k, v in runs.items()}}
    lengths = None
    if a.lengths and not sao:
        lengths = grouped_vs_masked(model, [float(x) for x in a.lengths.split(",")], a.repeats)
    print()
    print(shape)
    print(f"{a.steps} steps, guidance {guidance:g}, {torch.get_num_threads()} threads, medians of {a.repeats} "
          f"interleaved runs; "
          + (f"s/clip: no decode in the calls, one clip's decode ({statistics.median(decodes):.1f} s) added"
             if a.decode_once and decodes else f"diffusers decode {a.diffusers_decode}"))
    if rows:
        print(f"{'batch':>5} {'diffusers s/step':>17} {'soundry s/step':>15} {'ratio':>6} {'diffusers s/clip':>17} "
              f"{'soundry s/clip':>15} {'ratio':>6}")
    for r in rows:
        print(f"{r['batch']:>5} {r['diffusers_s_per_step']:>17.3f} {r['soundry_s_per_step']:>15.3f} "
              f"{r['diffusers_s_per_step'] / r['soundry_s_per_step']:>6.2f} {r['diffusers_s_per_clip']:>17.2f} "
              f"{r['soundry_s_per_clip']:>15.2f} {r['diffusers_s_per_clip'] / r['soundry_s_per_clip']:>6.2f}")
    if mixed:
        print(f"mixed arrivals: {len(plan)} requests, (arrival s, duration s): "
              + ", ".join(f"({t:.2f}, {d:g})" for t, d in plan))
        print(f"soundry's steps by rows stepped together: {mixed['soundry_step_batch_sizes']}; "
              f"max |latents soundry - diffusers alone| {mixed['max_abs_latent_diff_soundry_vs_diffusers']:.2e}")
        base = mixed["rows"]["diffusers per request"]
        print(f"{'':>22} {'makespan s':>11} {'mean latency s':>15} {'speed-up (makespan, latency)':>30}")
        for k, r in mixed["rows"].items():
            print(f"{k:>22} {r['makespan_s']:>11.1f} {r['mean_latency_s']:>15.1f} "
                  f"{base['makespan_s'] / r['makespan_s']:>14.2f} "
                  f"{base['mean_latency_s'] / r['mean_latency_s']:>15.2f}")
    if lengths:
        print(f"one DiT step of {len(lengths['durations'])} rows, latent frames {lengths['latent_frames']} "
              f"({lengths['groups']} lengths): grouped by length {lengths['grouped_s']:.2f} s "
              f"({lengths['frames_computed_grouped']} tokens), one padded batch with the self-attention key mask "
              f"{lengths['masked_padded_s']:.2f} s ({lengths['frames_computed_masked']} tokens); "
              f"max |difference| {lengths['max_abs_diff']:.1e}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS {peak:.1f} GiB")
    print(json.dumps({"bench": "stable_audio", "family": a.family, "layers": layers, "width": 64 * heads,
                      "shape": shape, "repeats": a.repeats, "duration": duration, "steps": a.steps,
                      "guidance": guidance, "threads": torch.get_num_threads(), "diffusers_decode": a.diffusers_decode,
                      "rows": rows, "mixed": mixed, "lengths": lengths, "peak_rss_gib": round(peak, 2)}))


def _latency(plan, finish) -> tuple[float, float]:
    """(makespan: the last finish since the first arrival; mean of finish − arrival)."""
    return max(finish), statistics.fmean(f - t for (t, _), f in zip(plan, finish, strict=True))


if __name__ == "__main__":
    main()

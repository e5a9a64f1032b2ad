"""Stable Audio: seconds per denoising step of soundry's diffusion batch against diffusers' own pipeline, on the
same random-weight networks of a release's shape, in one process; prints a table and one JSON line.

    .venv/bin/python bench/stable_audio.py --family sa3 --batch-sizes 1,4,8 --steps 4
    .venv/bin/python bench/stable_audio.py --family sao --layers 4 --batch-sizes 1,4 --steps 3   # a CPU-sized run

Shapes: ``sao`` is Stable Audio Open 1.0's (DiT 24 layers × 1536, 1024 latent frames of 64 channels = 47.55 s,
T5-base, Oobleck 44.1 kHz); ``sa3`` is Stable Audio 3 small as assumed here (DiT 16 layers × 1024, 16 heads,
64 memory tokens; T5Gemma b; SAME patch 256 × stride 16, 256 latent channels, 44.1 kHz): diffusers' class defaults
are the medium DiT (24 × 1536); ``--layers``/``--width`` override. Both sides run the same modules (the pipeline is
built from the objects soundry steps), batch B = B prompts with one generator each, guidance as given (SAO 7.0 with
its all-zero unconditional rows; SA3 1.0, no guidance), fp32 on the CPU.

Rows: ``diffusers`` — the pipeline called with B prompts and a list of B generators, its per-step time taken from
its step callback; ``soundry`` — ``DiffusionBatch.step`` over B jobs. Per-step figures are medians over the steps
after the first, over ``--repeats`` interleaved runs. ``s/clip``: a whole call (encode, steps, decode) / batch.
Memory: SAO decodes 47.55 s per clip whatever the duration; diffusers' batched Oobleck decode at batch 4 went past
11 GB and was OOM-killed on a shared 23 GB machine, so size ``--batch-sizes`` to the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
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


def diffusers_steps(pipe, kind, batch, steps, duration, guidance):
    """Per-step seconds of one pipeline call (from its step callback) and the call's total seconds."""
    stamps = []
    gens = [torch.Generator().manual_seed(i) for i in range(batch)]
    kw = dict(num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="pt")
    prompts = (PROMPTS * 2)[:batch]
    t0 = time.perf_counter()
    if kind == "sao":
        pipe(prompts, audio_end_in_s=duration, callback=lambda *a: stamps.append(time.perf_counter()), **kw)
    else:
        def cb(p, i, t, kwargs):
            stamps.append(time.perf_counter())
            return kwargs
        pipe(prompts, duration=duration, callback_on_step_end=cb, **kw)
    total = time.perf_counter() - t0
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)], total


def soundry_steps(model, batch, steps, duration, guidance):
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
    for j in jobs:
        model.decode(j.x, duration)
    return per[1:], time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", choices=["sao", "sa3"], default="sa3")
    ap.add_argument("--layers", type=int, help="DiT depth (default: the release's: SAO 24, SA3 small 16)")
    ap.add_argument("--heads", type=int, help="DiT heads of 64 (default: SAO 24, SA3 small 16)")
    ap.add_argument("--batch-sizes", default="1,4,8")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds (SAO's DiT always runs its full window)")
    ap.add_argument("--guidance", type=float, help="default: SAO 7.0, SA3 1.0")
    ap.add_argument("--repeats", type=int, default=2)
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
    rows = []
    for bs in [int(x) for x in a.batch_sizes.split(",")]:
        d_per, s_per, d_tot, s_tot = [], [], [], []
        for _ in range(a.repeats):  # interleaved, so that a busy machine slows both sides alike
            per, total = diffusers_steps(pipe, a.family, bs, a.steps, duration, guidance)
            d_per += per
            d_tot.append(total)
            per, total = soundry_steps(model, bs, a.steps, duration, guidance)
            s_per += per
            s_tot.append(total)
        rows.append({"batch": bs, "diffusers_s_per_step": statistics.median(d_per),
                     "soundry_s_per_step": statistics.median(s_per),
                     "diffusers_s_per_clip": statistics.median(d_tot) / bs,
                     "soundry_s_per_clip": statistics.median(s_tot) / bs})
    print(f"{a.family} DiT {layers} layers x {64 * heads}, {duration:g} s, {a.steps} steps, guidance {guidance:g}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'batch':>5} {'diffusers s/step':>17} {'soundry s/step':>15} {'ratio':>6} {'diffusers s/clip':>17} "
          f"{'soundry s/clip':>15}")
    for r in rows:
        print(f"{r['batch']:>5} {r['diffusers_s_per_step']:>17.3f} {r['soundry_s_per_step']:>15.3f} "
              f"{r['diffusers_s_per_step'] / r['soundry_s_per_step']:>6.2f} {r['diffusers_s_per_clip']:>17.2f} "
              f"{r['soundry_s_per_clip']:>15.2f}")
    print(json.dumps({"bench": "stable_audio", "family": a.family, "layers": layers, "width": 64 * heads,
                      "repeats": a.repeats,
                      "duration": duration, "steps": a.steps, "guidance": guidance,
                      "threads": torch.get_num_threads(), "rows": rows}))


if __name__ == "__main__":
    main()

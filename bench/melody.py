"""What a melody adds to a MusicGen-melody task on this machine: demucs stems and the chroma, against decode steps.

    python bench/melody.py [--seconds 30] [--repeats 3] [--steps 8] [--threads N]

Times, in one process: stem separation (a real-size HTDemucs with random weights: the htdemucs release's shape,
its parameter count printed) of a ``--seconds`` stereo 44.1 kHz melody, as soundry runs it
(``soundry.models.audiocraft.conditioners.melody.melody_stems``: split segments, one time shift); the chroma of
the stems; and, as the
baseline a task pays anyway, decode steps of a real-shape MusicGen-melody LM (musicgen-melody's 1.5B shape, no
cross-attention, random weights) at batch 1 with the prefix a melody task carries (235 chroma frames + 20 text
tokens), timed interleaved with the separations. Reports medians, the separation's cost in decode steps, and the
CPU flags. A clip of 30 s is 1,503 decode steps; beyond 30 s each window (every 18 s) separates the melody again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_flags, parse_args  # noqa: E402
from soundry.engine.batch import DecodeBatch, Job  # noqa: E402
from soundry.engine.request import GenerationRequest  # noqa: E402
from soundry.engine.windows import Window  # noqa: E402
from soundry.models.audiocraft.conditioners.melody import ChromaExtractor, melody_stems  # noqa: E402
from soundry.models.audiocraft.lm.transformer import TransformerLM, init_random_  # noqa: E402
from soundry.models.audiocraft.shapes import lm_config  # noqa: E402


def htdemucs_random():
    """HTDemucs in the htdemucs release's configuration (demucs 4's ``htdemucs`` model: 4 sources, 48 channels,
    depth 4, a 5-layer cross-domain transformer over 512 bottom channels, 7.8 s segments), random weights."""
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(0)
    model = HTDemucs(sources=["drums", "bass", "other", "vocals"], audio_channels=2, samplerate=44100,
                     segment=Fraction(39, 5), channels=48, depth=4, bottom_channels=512, t_layers=5)
    return model.eval()


def melody_lm() -> TransformerLM:
    cfg = dataclasses.replace(lm_config("musicgen-medium"), cross_attention=False, prepend=("self_wav", "description"))
    with torch.device("meta"):
        lm = TransformerLM(cfg)
    lm = lm.to_empty(device="cpu")
    init_random_(lm)
    return lm.eval()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0, help="melody length (default 30: the model's context)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8, help="decode steps timed per repeat")
    a = parse_args(ap, argv)

    demucs = htdemucs_random()
    params = sum(p.numel() for p in demucs.parameters())
    g = torch.Generator().manual_seed(1)
    tune = torch.randn(1, 2, int(a.seconds * 44100), generator=g) * 0.1
    extractor = ChromaExtractor(32000, n_chroma=12, radix2_exp=14, argmax=True)

    lm = melody_lm()
    prefix_len = 235 + 20
    batch = DecodeBatch(lm, 1, 64, max_prefix=prefix_len)
    prefix = torch.randn(2, prefix_len, lm.cfg.dim, generator=g) * 0.02

    def decode_steps() -> float:
        job = Job(GenerationRequest("bench", seed=0), [Window(64, 0)], torch.zeros(2, 1, lm.cfg.dim),
                  torch.ones(2, 1, dtype=torch.bool), torch.Generator().manual_seed(0))
        job.prefix, job.prefix_len = (lambda _w: prefix), prefix_len
        batch.admit(job)  # the prefill is outside the timed steps
        t0 = time.perf_counter()
        for _ in range(a.steps):
            batch.step()
        took = (time.perf_counter() - t0) / a.steps
        batch.remove(job)
        return took

    stems_s, chroma_s, step_s = [], [], []
    decode_steps()  # warm-up
    for r in range(a.repeats):
        t0 = time.perf_counter()
        stems = melody_stems(demucs, tune, 44100, shift=r * 1000, out_rate=32000)
        stems_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        extractor(stems)
        chroma_s.append(time.perf_counter() - t0)
        step_s.append(decode_steps())

    sep, chroma, step = (statistics.median(x) for x in (stems_s, chroma_s, step_s))
    row = {"melody_seconds": a.seconds, "htdemucs_params_m": round(params / 1e6, 1),
           "separation_s": round(sep, 2), "chroma_s": round(chroma, 3), "decode_step_s": round(step, 3),
           "separation_in_decode_steps": round((sep + chroma) / step, 1),
           "share_of_a_30s_clip": round((sep + chroma) / (sep + chroma + 1503 * step), 3),
           "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(), "flags": cpu_flags()}
    print(f"HTDemucs (random weights, {row['htdemucs_params_m']} M parameters), melody of {a.seconds:g} s, "
          f"{a.repeats} repeats, {row['threads']} threads; CPU flags: {row['flags']}")
    print(f"  stem separation        {sep:8.2f} s (median)")
    print(f"  chroma of the stems    {chroma:8.3f} s")
    print(f"  MusicGen-melody 1.5B decode step, batch 1, prefix {prefix_len}: {step:.3f} s")
    print(f"  => the melody costs {row['separation_in_decode_steps']} decode steps; "
          f"{100 * row['share_of_a_30s_clip']:.1f}% of a 30 s clip's time at batch 1")
    print(json.dumps(row))


if __name__ == "__main__":
    main()

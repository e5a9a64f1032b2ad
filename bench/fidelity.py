"""How far int8 (and bf16, fp16) decoding strays from float32, on the same weights.

    python bench/fidelity.py --precisions int8,bf16 --duration 5

Models: the reference checkpoints in tests/data (tiny, random weights; audiocraft's own outputs are
their golden files) and a real-size LM with random weights (``--shape``, default musicgen-small,
written as a release directory with the tiny model's text encoder and codec). Each is loaded through
``load_model(..., precision=P)``, exactly as the service loads it. For each precision against fp32:

- teacher-forced logits on fp32's own greedy tokens: mean KL(fp32 || P) per position (nats) and
  top-1 agreement (share of positions whose argmax matches);
- greedy decoding (top_k = 1, guidance 3.0) for ``--duration`` seconds: the frame of the first token
  that differs from fp32's (after it, each run conditions on its own history, so later tokens are
  not comparable), and the share of equal tokens over the whole clip. ``P+compiled`` (fp32 or bf16)
  takes these tokens from the compiled decode step (``generate(compile=True)``).

Random weights give near-flat, structureless distributions: these numbers measure numerical drift,
not perceived audio quality, which needs the released weights and listening tests.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import TEST_DATA, parse_args, tiny_companion  # noqa: E402
from soundry.engine.generate import generate  # noqa: E402
from soundry.models import load_model  # noqa: E402
from soundry.models.audiocraft.shapes import SHAPES, write_random_release  # noqa: E402
from tests.helpers_teacher import teacher_logits  # noqa: E402

PROMPT = "a dog barks while rain falls on a tin roof"


def greedy(model, duration: float, compile: bool = False) -> torch.Tensor:
    return generate(model, [PROMPT], duration=duration, top_k=1, top_p=0.0, cfg_coef=3.0, seed=0,
                    compile=compile).tokens[0]


def compare(reference, candidate, ref_tokens: torch.Tensor, duration: float, compile: bool = False) -> dict:
    """Teacher-forced and free-running agreement of ``candidate`` with ``reference`` (fp32); with
    ``compile`` the free-running tokens come from the compiled decode step (the teacher-forced
    logits do not use the step)."""
    codes = ref_tokens[None]
    ref_logits, mask = teacher_logits(reference, codes, [PROMPT])
    cand_logits, _ = teacher_logits(candidate, codes, [PROMPT])
    p, q = ref_logits[mask].double(), cand_logits[mask].double()  # [positions, card]
    kl = (p.softmax(-1) * (p.log_softmax(-1) - q.log_softmax(-1))).sum(-1)
    top1 = (p.argmax(-1) == q.argmax(-1)).double().mean().item()
    t0 = time.perf_counter()
    tokens = greedy(candidate, duration, compile)
    seconds = time.perf_counter() - t0
    differ = (tokens != ref_tokens).any(0).nonzero()
    frames = ref_tokens.shape[-1]
    return {"kl_mean": kl.mean().item(), "kl_max": kl.max().item(), "top1_agreement": top1,
            "greedy_frames": frames, "first_divergence_frame": int(differ[0]) if len(differ) else None,
            "greedy_token_agreement": (tokens == ref_tokens).double().mean().item(),
            "greedy_seconds": round(seconds, 1)}


def evaluate(name: str, path: Path, precisions: list[str], duration: float) -> list[dict]:
    reference = load_model(str(path), device="cpu", precision="fp32")
    t0 = time.perf_counter()
    ref_tokens = greedy(reference, duration)
    ref_seconds = time.perf_counter() - t0
    rows = []
    for variant in precisions:
        precision, _, mode = variant.partition("+")  # e.g. "bf16+compiled"
        if mode not in ("", "compiled"):
            raise SystemExit(f"unknown variant {variant!r}: a precision, optionally +compiled")
        candidate = load_model(str(path), device="cpu", precision=precision)
        row = {"model": name, "precision": variant,
               **compare(reference, candidate, ref_tokens, duration, compile=mode == "compiled"),
               "fp32_greedy_seconds": round(ref_seconds, 1)}
        rows.append(row)
        print(_format(row), flush=True)
        del candidate
    return rows


HEADER = (f"{'model':22s} {'precision':13s} {'KL mean':>9s} {'KL max':>9s} {'top-1':>7s} "
          f"{'frames':>6s} {'1st diff':>8s} {'tokens =':>8s}")


def _format(r: dict) -> str:
    first = "none" if r["first_divergence_frame"] is None else str(r["first_divergence_frame"])
    return (f"{r['model']:22s} {r['precision']:13s} {r['kl_mean']:9.2e} {r['kl_max']:9.2e} "
            f"{100 * r['top1_agreement']:6.2f}% {r['greedy_frames']:6d} {first:>8s} "
            f"{100 * r['greedy_token_agreement']:7.2f}%")


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precisions", default="int8,bf16", help="compared with fp32 (any of int8, bf16, fp16; "
                    "fp32+compiled or bf16+compiled: greedy tokens from the compiled step)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of greedy decoding (50 frames/s)")
    ap.add_argument("--shape", default="musicgen-small", choices=sorted(SHAPES), help="the real-size random LM")
    ap.add_argument("--no-real-size", action="store_true", help="only the tiny reference checkpoints")
    a = parse_args(ap, argv)
    precisions = [p for p in a.precisions.split(",") if p]
    print(f"fidelity vs fp32: greedy {a.duration:g} s, teacher-forced on fp32's greedy tokens, "
          f"{torch.get_num_threads()} threads")
    print(HEADER)
    rows = []
    for kind in ("audiogen", "musicgen"):
        rows += evaluate(f"{kind}-tiny (reference)", TEST_DATA / f"{kind}-tiny", precisions, a.duration)
    if not a.no_real_size:
        with tempfile.TemporaryDirectory(prefix="soundry-fidelity-") as tmp:
            release = write_random_release(Path(tmp) / a.shape, a.shape, tiny_companion(a.shape))
            rows += evaluate(f"{a.shape} (random)", release, precisions, a.duration)
    print(json.dumps({"duration": a.duration, "rows": rows}))
    return rows


if __name__ == "__main__":
    main()

"""End to end (text encoding, decoding, codec) on a release-format checkpoint, engine vs. eager.

    python bench/end_to_end.py [--dim 512 --heads 8 --layers 8] [--duration 1] [--batch-sizes 1,8]

Writes a release-format directory (random LM weights of the given size on the musicgen-small
layout; the tiny reference model's text encoder and codec, so it loads offline), loads it as the
service does, and times generating the same clips three ways, interleaved run by run (so the
machine's drift hits all alike), median of ``--repeats``:

- ``soundry generate``: ``soundry.engine.generate.generate`` on the model loaded as the service loads it by
  default (in fp32: soundry's few-row linear kernel, ``soundry.models.audiocraft.lm.rows_kernel``, where it
  builds; oneDNN's packed linears otherwise — the row's name says which);
- the same on oneDNN's packed linears (``cpu_linear = "onednn"``; ``soundry.models.audiocraft.lm.packed``), the
  default before the row kernel;
- the same with the decode step compiled (``generate(compile=True)``, ``soundry.engine.compiled_steps``;
  ``--no-compile`` leaves it out); its first call compiles, which the warm-up round absorbs and the
  table reports apart (cold: a fresh inductor cache);
- the same with plain ``nn.Linear`` weights (``packed=False``);
- the eager reference-style baseline (``bench/eager_baseline.py``: cross-attention recomputed
  each step, cache grown by concatenation, plain weights), with the same text encoding
  (``AudioModel.conditions``) and codec decode (``AudioModel.decode``).

``--precision bf16`` runs soundry's rows in bf16 (the baseline stays fp32, as the reference runs).
Prints a table, the ratios, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.eager_baseline import EagerDecoder  # noqa: E402
from bench.machine import cpu_flags, parse_args, tiny_companion  # noqa: E402
from soundry.engine.generate import generate  # noqa: E402
from soundry.engine.request import GenerationRequest  # noqa: E402
from soundry.models import load_model  # noqa: E402
from soundry.models.audiocraft.shapes import write_random_release  # noqa: E402

PROMPTS = ["calm piano with soft strings", "motorcycle engine revving", "rain on a tin roof", "a dog barking",
           "lofi hip hop beat", "wind through pine trees", "crowd cheering in a stadium", "church bells"]


def baseline_generate(model, prompts: list[str], duration: float, top_k: int = 250) -> torch.Tensor:
    """Text → codes → audio, the reference way (joint conditioning, as audiocraft batches)."""
    requests = [GenerationRequest(p, duration, top_k) for p in prompts]
    pairs = model.conditions(requests, joint=True)
    cond = torch.cat([torch.stack([c[0] for c, _ in pairs]), torch.stack([c[1] for c, _ in pairs])])
    frames = math.ceil(duration * model.frame_rate - 1e-6)
    codes = EagerDecoder(model.lm, top_k=top_k, cfg_coef=model.cfg.cfg_coef).generate(cond, frames)
    return model.decode(codes)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--duration", type=float, default=1.0, help="seconds of audio per clip")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="leave out the compiled row")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="soundry's rows (baseline: fp32)")
    ap.add_argument("--compile-cache", default=None,
                    help="inductor's cache folder (default: a new one, so the first call compiles cold; give the same "
                         "folder twice to time a restart)")
    a = parse_args(ap, argv)

    with tempfile.TemporaryDirectory(prefix="soundry-e2e-") as tmp:
        release = write_random_release(Path(tmp) / "lm", "musicgen-small", tiny_companion("musicgen-small"), dim=a.dim,
                                       num_heads=a.heads, num_layers=a.layers)
        packed = load_model(str(release), device="cpu", precision=a.precision)
        onednn = load_model(str(release), device="cpu", precision=a.precision, packed="onednn")
        plain = load_model(str(release), device="cpu", precision=a.precision, packed=False)
        reference = plain if a.precision == "fp32" else load_model(str(release), device="cpu", precision="fp32",
                                                                   packed=False)

    compile_cache = a.compile_cache or tempfile.mkdtemp(prefix="soundry-inductor-")
    variants = {
        f"soundry generate (default: {packed.weights})": lambda p: generate(packed, p, a.duration, seed=0).audio,
        "soundry generate (oneDNN packed)": lambda p: generate(onednn, p, a.duration, seed=0).audio,
        f"soundry generate ({packed.weights}, compiled)": lambda p: generate(packed, p, a.duration, seed=0,
                                                                            compile=True,
                                                                            compile_cache=compile_cache).audio,
        "soundry generate (plain nn.Linear)": lambda p: generate(plain, p, a.duration, seed=0).audio,
        "eager reference-style baseline": lambda p: baseline_generate(reference, p, a.duration),
    }
    if not a.compile:
        del variants[f"soundry generate ({packed.weights}, compiled)"]
    if a.precision != "fp32":
        variants = {name.replace("(", f"({a.precision}, ", 1) if name.startswith("soundry") else name: fn
                    for name, fn in variants.items()}
    results = {"dim": a.dim, "heads": a.heads, "layers": a.layers, "duration": a.duration, "precision": a.precision,
               "threads": torch.get_num_threads(), "cpu_flags": cpu_flags(), "rows": []}
    print(f"release checkpoint dim {a.dim}, {a.heads} heads, {a.layers} layers (random weights); {a.duration:g} s "
          f"clips; {torch.get_num_threads()} threads; median of {a.repeats}; cpu flags: {results['cpu_flags']}")
    print(f"{'implementation':42s} {'batch':>5s} {'s/batch':>8s} {'clips/s':>8s} {'vs baseline':>12s}")
    for b in (int(x) for x in a.batch_sizes.split(",")):
        prompts = (PROMPTS * math.ceil(b / len(PROMPTS)))[:b]
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(a.repeats + 1):  # the first round warms up (and compiles)
            for name, fn in variants.items():
                t0 = time.perf_counter()
                audio = fn(prompts)
                if r:
                    samples[name].append(time.perf_counter() - t0)
                elif "compiled" in name:
                    results.setdefault("first_call_seconds", {})[b] = round(time.perf_counter() - t0, 1)
                assert audio.shape[0] == b and torch.isfinite(audio).all()
        base = statistics.median(samples["eager reference-style baseline"])
        for name, ts in samples.items():
            t = statistics.median(ts)
            results["rows"].append({"name": name, "batch": b, "seconds": round(t, 4), "clips_per_s": round(b / t, 3),
                                    "speedup_vs_baseline": round(base / t, 2)})
            print(f"{name:42s} {b:5d} {t:8.3f} {b / t:8.2f} {base / t:11.2f}x")
    for b, t in results.get("first_call_seconds", {}).items():
        print(f"compiled, batch {b}: first call (compiling) {t} s")
    results["machine"] = platform.processor() or platform.machine()
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()

"""Start-up cost of a model in each precision: load time and peak resident memory.

    python bench/startup.py --shape audiogen-medium --precisions fp32,bf16,fp16,int8
    python bench/startup.py --shape musicgen-small --precisions fp32,bf16 --formats audiocraft,transformers \
        --decode-seconds 2

Writes a release-format directory with the shape's LM (random weights, stored in float16 as the
releases are) and the tiny reference model's text encoder and codec, then loads it once per
precision, each in a fresh process (peak RSS is per process), exactly as the service does
(``load_model(dir, precision=P)``, which also runs one check step). Reports seconds to load and the
process's peak resident memory, less what the process held before loading (imports). Prints a table,
then one JSON line. Each load needs up to ~1.5x the float32 weights in free memory (6 GB for
audiogen-medium in float32): run it on a machine that has it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Peak RSS from /proc's VmHWM (this process's own high-water mark; ru_maxrss would also carry the
# parent's peak across fork and exec).
CHILD = """
import json, sys, time
import torch
from soundry.models import load_model
def hwm():
    line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 2**20
before = hwm()
t0 = time.perf_counter()
model = load_model(sys.argv[1], device="cpu", precision=sys.argv[2])
seconds = time.perf_counter() - t0
peak = hwm()
row = {"precision": model.precision, "load_seconds": round(seconds, 1), "peak_rss_gib": round(peak, 2),
       "peak_rss_over_imports_gib": round(peak - before, 2)}
if float(sys.argv[3]) > 0:  # decode speed: one prompt, after a warm-up
    from soundry.engine.generate import generate
    generate(model, ["warm up"], duration=0.1, top_k=250, seed=0)
    t0 = time.perf_counter()
    out = generate(model, ["a calm piano"], duration=float(sys.argv[3]), top_k=250, seed=0)
    steps = out.tokens.shape[-1] + max(model.cfg.delays)
    row["decode_steps_per_s"] = round(steps / (time.perf_counter() - t0), 1)
print(json.dumps(row))
"""


def main(argv=None) -> list[dict]:
    from bench.machine import tiny_companion
    from soundry.models.audiocraft.shapes import SHAPES, write_random_release

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="audiogen-medium", choices=sorted(SHAPES))
    ap.add_argument("--precisions", default="fp32,bf16,fp16,int8")
    ap.add_argument("--decode-seconds", type=float, default=0.0,
                    help="also time generating this many seconds of audio after the load (decode steps/s)")
    ap.add_argument("--formats", default="audiocraft",
                    help="audiocraft,transformers: also load the same weights written in transformers' layout "
                         "(tests.helpers_hf_convert, float16 like the release; needs a musicgen shape)")
    a = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="soundry-startup-") as tmp:
        release = write_random_release(Path(tmp) / a.shape, a.shape, tiny_companion(a.shape))
        size = (release / "state_dict.bin").stat().st_size
        dirs = {"audiocraft": release}
        if "transformers" in a.formats:
            import torch

            from tests.helpers_hf_convert import to_transformers

            dirs["transformers"] = to_transformers(release, Path(tmp) / "transformers", dtype=torch.float16)
        print(f"shape {a.shape}: checkpoint {size / 2**30:.2f} GiB (float16), loaded on the CPU, one process each")
        print(f"{'format':12s} {'precision':9s} {'load s':>7s} {'peak RSS GiB':>13s} {'over imports':>13s} "
              f"{'steps/s':>10s}")
        for fmt in [f for f in a.formats.split(",") if f]:
            for precision in [p for p in a.precisions.split(",") if p]:
                out = subprocess.run([sys.executable, "-c", CHILD, str(dirs[fmt]), precision, str(a.decode_seconds)],
                                     capture_output=True,
                                     text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), **_env()})
                if out.returncode != 0:  # a negative code is a signal: -9 is usually the OOM killer
                    row = {"format": fmt, "precision": precision, "returncode": out.returncode,
                           "error": out.stderr.strip().splitlines()[-1:]}
                    print(f"{fmt:12s} {precision:9s} failed (exit {out.returncode}): {row['error']}")
                else:
                    row = {"format": fmt, **json.loads(out.stdout.strip().splitlines()[-1])}
                    print(f"{fmt:12s} {precision:9s} {row['load_seconds']:7.1f} {row['peak_rss_gib']:13.2f} "
                          f"{row['peak_rss_over_imports_gib']:13.2f} {row.get('decode_steps_per_s', '-'):>10}")
                rows.append(row)
    print(json.dumps({"shape": a.shape, "checkpoint_gib": round(size / 2**30, 2), "rows": rows}))
    return rows


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


if __name__ == "__main__":
    main()

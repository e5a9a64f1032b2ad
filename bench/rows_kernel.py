"""soundry's few-row CPU linear kernel against oneDNN's packed inner product, row count by row count.

    python bench/rows_kernel.py [--dim 512 --layers 8] [--rows 1,2,4,8,16,32,64,256] [--repeats 30]

Times one decode step's linear layers (per layer: qkv 3D×D, out D×D, cross q and out D×D, feed-forward
4D×D and D×4D; then the 4 output heads 2048×D: the musicgen layout), all weights in a row so they
stream from memory as in a step, for each row count (2 per request: a batch of b requests is 2b rows),
both kernels interleaved round by round; medians. Also checks that a row's output is the same bit for
bit whatever the row count of the call (the kernel's claim) and the largest difference from ``F.linear``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_flags, parse_args  # noqa: E402
from soundry.models.audiocraft.lm import rows_kernel  # noqa: E402


def step_shapes(dim: int, layers: int, card: int = 2048, heads: int = 4) -> list[tuple[int, int]]:
    per_layer = [(3 * dim, dim), (dim, dim), (dim, dim), (dim, dim), (4 * dim, dim), (dim, 4 * dim)]
    return per_layer * layers + [(card, dim)] * heads


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--rows", default="1,2,4,8,16,32,64,256")
    ap.add_argument("--repeats", type=int, default=30)
    a = parse_args(ap, argv)
    if not rows_kernel.available():
        sys.exit("soundry's CPU linear kernel could not be built here (see the log)")
    g = torch.Generator().manual_seed(0)
    shapes = step_shapes(a.dim, a.layers)
    weights = [torch.randn(o, i, generator=g) / i ** 0.5 for o, i in shapes]
    onednn = [torch.ops.mkldnn._reorder_linear_weight(w, 2) for w in weights]
    blocked = [rows_kernel.block_weight(w) for w in weights]
    mb = sum(w.numel() * 4 for w in weights) / 1e6
    results = {"dim": a.dim, "layers": a.layers, "weights_mb": round(mb, 1), "threads": torch.get_num_threads(),
               "cpu_flags": cpu_flags(), "rows": []}
    print(f"{len(shapes)} linear layers, {mb:.0f} MB of fp32 weights; {torch.get_num_threads()} threads; "
          f"median of {a.repeats}; cpu flags: {results['cpu_flags']}")
    print(f"{'rows':>5s} {'oneDNN ms':>10s} {'GB/s':>6s} {'soundry ms':>11s} {'GB/s':>6s} {'speed-up':>9s} "
          f"{'row-invariant':>14s} {'max |diff| vs F.linear':>23s}")
    for m in (int(r) for r in a.rows.split(",")):
        xs = {k: torch.randn(m, 1, k, generator=g) for k in {i for _, i in shapes}}
        runs = {"onednn": lambda xs=xs: [torch.ops.mkldnn._linear_pointwise(xs[w.shape[1]], p, None, "none", [], "")
                                         for p, w in zip(onednn, weights, strict=True)],
                "soundry": lambda xs=xs: [torch.ops.soundry.rows_linear(xs[w.shape[1]], b, None)
                                          for b, w in zip(blocked, weights, strict=True)]}
        samples: dict[str, list[float]] = {k: [] for k in runs}
        for r in range(a.repeats + 2):
            for k, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                if r >= 2:
                    samples[k].append(time.perf_counter() - t0)
        t_o, t_s = statistics.median(samples["onednn"]), statistics.median(samples["soundry"])
        x, b, w = xs[shapes[0][1]], blocked[0], weights[0]
        full = torch.ops.soundry.rows_linear(x, b, None)
        invariant = all(torch.equal(torch.ops.soundry.rows_linear(x[:r].contiguous(), b, None), full[:r])
                        for r in range(1, m))
        diff = (full - F.linear(x, w)).abs().max().item()
        row = {"rows": m, "onednn_ms": round(t_o * 1e3, 3), "soundry_ms": round(t_s * 1e3, 3),
               "speedup": round(t_o / t_s, 2), "row_invariant": invariant, "max_abs_diff_vs_F_linear": diff}
        results["rows"].append(row)
        print(f"{m:5d} {t_o * 1e3:10.2f} {mb / t_o / 1e3:6.1f} {t_s * 1e3:11.2f} {mb / t_s / 1e3:6.1f} "
              f"{t_o / t_s:8.2f}x {str(invariant):>14s} {diff:23.2e}")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()

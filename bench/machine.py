"""What every benchmark shares: its ``--threads`` option and torch set up for timing inference, and
what it ran on (the CPU's vector-instruction flags: AVX2 only, AVX-512, VNNI, AMX...), and the tiny
reference checkpoint a random-weight release borrows its text encoder and codec from."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

TEST_DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def parse_args(ap: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """``ap``'s arguments plus ``--threads``; applies the thread count and turns autograd off."""
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    return a


def cpu_flags() -> str:
    """The AVX/AMX/FMA flags from /proc/cpuinfo ("unknown" where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return " ".join(f for f in flags if f.startswith(("avx", "amx", "fma")))


def tiny_companion(shape: str) -> Path:
    """The tiny reference checkpoint of ``shape``'s family, whose text encoder and codec a release of
    random real-size weights uses (so it loads offline)."""
    return TEST_DATA / ("audiogen-tiny" if shape.startswith("audiogen") else "musicgen-tiny")

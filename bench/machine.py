"""What a benchmark ran on: the CPU's vector-instruction flags (AVX2 only, AVX-512, VNNI, AMX...)."""

from __future__ import annotations


def cpu_flags() -> str:
    """The AVX/AMX/FMA flags from /proc/cpuinfo ("unknown" where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return " ".join(f for f in flags if f.startswith(("avx", "amx", "fma")))

"""Shared helpers for tests that load the tiny reference checkpoints."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

import tests.device  # noqa: F401  (SOUNDRY_TEST_DEVICE=cuda: models load on CUDA)

DATA = Path(__file__).parent / "data"
TINY = {"audiogen": DATA / "audiogen-tiny", "musicgen": DATA / "musicgen-tiny",
        "musicgen-stereo": DATA / "musicgen-stereo-tiny", "musicgen-melody": DATA / "musicgen-melody-tiny",
        "musicgen-stereo-melody": DATA / "musicgen-stereo-melody-tiny"}


@cache
def default_cpu_weights() -> str:
    """The weight layout an fp32 CPU load gets by default: soundry's row kernel where it builds, else oneDNN's."""
    from soundry.models.audiocraft.lm import rows_kernel

    return "rows" if rows_kernel.available() else "packed"


def random_lm(num_layers: int, seed: int):
    """A musicgen-small-layout LM of width 256 (4 heads, cross-attention) with random weights, in eval mode."""
    from soundry.models.audiocraft.checkpoint import LMConfig
    from soundry.models.audiocraft.lm.transformer import TransformerLM, init_random_
    from soundry.models.audiocraft.shapes import xp_cfg

    cfg = LMConfig.from_cfg(xp_cfg("musicgen-small", dim=256, num_heads=4, num_layers=num_layers, cross_attention=True))
    lm = TransformerLM(cfg).eval()
    init_random_(lm, seed=seed)
    return lm


def tiny_model(kind: str):
    from soundry.models import load_model

    return load_model(str(TINY[kind]), device="cpu")


@cache
def golden(kind: str) -> dict:
    return torch.load(TINY[kind] / "golden.pt", weights_only=True)


@cache
def melody_reference(kind: str) -> dict:
    """audiocraft's outputs on a melody fixture (tests/data/<kind>-tiny/melody.pt; see tests/data/REFERENCE.md)."""
    return torch.load(TINY[kind] / "melody.pt", weights_only=True)


@cache
def continuation(kind: str) -> dict:
    return torch.load(TINY[kind] / "continuation.pt", weights_only=True)


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4) -> None:
    """Max abs error ≤ rel × max |expected| (the '~1e-4 relative' of DESIGN.md)."""
    scale = expected.abs().max().clamp_min(1e-12)
    err = (actual.float() - expected.float()).abs().max()
    assert err <= rel * scale, f"max error {err:.3e} > {rel:g} × {scale:.3e}"

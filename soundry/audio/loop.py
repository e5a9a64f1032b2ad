"""Seamless loops: a clip generated a little past its end, the extra tail crossfaded into its head."""

from __future__ import annotations

import numpy as np


def loop_overlap(duration: float) -> float:
    """Seconds to generate past ``duration`` for a loop: a quarter of the clip, at most half a second."""
    return min(0.5, duration / 4)


def make_loop(audio: np.ndarray, samples: int) -> np.ndarray:
    """[C, samples + X] → [C, samples] that loops without a jump.

    The X samples after the end are blended into the first X with an equal-power crossfade (tail
    weight cos, head weight sin), so sample 0 of the loop is the sample that followed the last one
    when it was generated, and by sample X the clip is its own head again."""
    audio = np.asarray(audio, dtype=np.float32)
    extra = audio.shape[-1] - samples
    if samples <= 0 or extra <= 0:
        raise ValueError(f"make_loop needs more than {samples} samples, got {audio.shape[-1]}")
    x = min(extra, samples)
    ramp = (np.arange(x, dtype=np.float64) + 0.5) / x * (np.pi / 2)
    out = audio[..., :samples].copy()
    out[..., :x] = audio[..., samples:samples + x] * np.cos(ramp) + audio[..., :x] * np.sin(ramp)
    return out.astype(np.float32)

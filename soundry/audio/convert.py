"""Converting a clip to a model's sample rate and channel count (audiocraft's ``convert_audio``).

Resampling uses soxr (libsoxr, very-high-quality setting), where audiocraft uses julius' sinc
resampler: the two differ by small amounts near the band edge, so a prompt at another rate than the
model's can encode to slightly different codes than audiocraft would give. At the model's own rate
nothing is resampled and both agree exactly.
"""

from __future__ import annotations

import numpy as np
import soxr
import torch


def resample(audio: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """[C, N] float32 at ``src_rate`` → [C, M] float32 at ``dst_rate``."""
    if src_rate == dst_rate:
        return np.asarray(audio, dtype=np.float32)
    out = soxr.resample(np.ascontiguousarray(np.asarray(audio, dtype=np.float32).T), src_rate, dst_rate, quality="VHQ")
    return np.ascontiguousarray(out.reshape(out.shape[0], -1).T)


def convert_audio(audio: torch.Tensor, src_rate: int, dst_rate: int, channels: int) -> torch.Tensor:
    """[..., C, N] → [..., channels, M]: resample, then mono → stereo by duplication or stereo → mono
    by the mean (as audiocraft's ``convert_audio_channels``)."""
    if audio.shape[-2] != channels:
        if channels == 1:
            audio = audio.mean(dim=-2, keepdim=True)
        elif audio.shape[-2] == 1:
            audio = audio.expand(*audio.shape[:-2], channels, audio.shape[-1])
        else:
            raise ValueError(f"cannot convert {audio.shape[-2]}-channel audio to {channels} channels")
    if src_rate == dst_rate:
        return audio.float()
    lead = audio.shape[:-2]
    flat = audio.reshape(-1, audio.shape[-1]).float().cpu().numpy()
    out = torch.from_numpy(resample(flat, src_rate, dst_rate))
    return out.reshape(*lead, channels, out.shape[-1])

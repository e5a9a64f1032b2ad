"""Level normalisation of a clip [C, N] float32."""

from __future__ import annotations

import numpy as np

NORMALIZATIONS = ("loudness", "peak", "rms", "none")


def normalize(audio: np.ndarray, sample_rate: int, method: str = "loudness", target_lufs: float = -14.0,
              peak_db: float = -1.0, rms_db: float = -20.0) -> np.ndarray:
    """``loudness``: ITU-R BS.1770 integrated loudness to ``target_lufs`` (pyloudnorm); ``peak``:
    peak to ``peak_db`` dBFS; ``rms``: RMS to ``rms_db`` dBFS; ``none``. Loudness and RMS gains are
    limited so the peak stays at or below ``peak_db``. Silence is returned unchanged."""
    if method not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {method!r}; choose one of {', '.join(NORMALIZATIONS)}")
    audio = np.nan_to_num(np.asarray(audio, dtype=np.float32))
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if method == "none" or peak < 1e-9:
        return audio
    peak_limit = 10 ** (peak_db / 20)
    if method == "peak":
        gain = peak_limit / peak
    elif method == "rms":
        rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
        gain = min(10 ** (rms_db / 20) / rms, peak_limit / peak)
    else:
        import pyloudnorm

        meter = pyloudnorm.Meter(sample_rate)
        try:
            loudness = meter.integrated_loudness(audio.T.astype(np.float64))
        except ValueError:  # shorter than one 400 ms gating block: fall back to peak
            loudness = float("-inf")
        if not np.isfinite(loudness):
            return (audio * (peak_limit / peak)).astype(np.float32)
        gain = min(10 ** ((target_lufs - loudness) / 20), peak_limit / peak)
    return (audio * gain).astype(np.float32)

"""Encoding a clip [C, N] float32 to bytes in the requested container."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf

# name: (soundfile format, subtype, content type, extension)
FORMATS = {
    "wav": ("WAV", "PCM_16", "audio/wav", "wav"),
    "flac": ("FLAC", "PCM_16", "audio/flac", "flac"),
    "ogg": ("OGG", "VORBIS", "audio/ogg", "ogg"),
    "opus": ("OGG", "OPUS", "audio/ogg", "opus"),
    "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg", "mp3"),
}
OPUS_RATES = (48000, 24000, 16000, 12000, 8000)


@dataclass
class EncodedAudio:
    data: bytes
    content_type: str
    extension: str
    sample_rate: int


def encode(audio: np.ndarray, sample_rate: int, fmt: str = "wav") -> EncodedAudio:
    if fmt not in FORMATS:
        raise ValueError(f"unknown output_format {fmt!r}; supported: {', '.join(FORMATS)}")
    container, subtype, content_type, ext = FORMATS[fmt]
    audio = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    if fmt == "opus" and sample_rate not in OPUS_RATES:
        audio, sample_rate = _resample(audio, sample_rate, 48000), 48000
    buf = io.BytesIO()
    sf.write(buf, audio.T, sample_rate, format=container, subtype=subtype)
    return EncodedAudio(buf.getvalue(), content_type, ext, sample_rate)


def _resample(audio: np.ndarray, src: int, dst: int) -> np.ndarray:
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(src, dst)
    return resample_poly(audio, dst // g, src // g, axis=-1).astype(np.float32)

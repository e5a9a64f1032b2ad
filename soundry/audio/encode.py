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
# bit_depth → the PCM subtype per container that has it (16 everywhere PCM is; 24: wav, flac; 32 float: wav)
DEPTHS = {16: {"wav": "PCM_16", "flac": "PCM_16"}, 24: {"wav": "PCM_24", "flac": "PCM_24"}, 32: {"wav": "FLOAT"}}


@dataclass
class EncodedAudio:
    data: bytes
    content_type: str
    extension: str
    sample_rate: int


def check_depth(fmt: str, bit_depth: int) -> None:
    """ValueError (a sentence) unless ``fmt`` holds ``bit_depth`` (16 for the lossy formats means their default)."""
    if bit_depth not in DEPTHS:
        raise ValueError(f"bit_depth {bit_depth}: use 16, 24 (wav, flac) or 32 (float wav)")
    if bit_depth != 16 and fmt not in DEPTHS[bit_depth]:
        raise ValueError(f"bit_depth {bit_depth} needs output_format {' or '.join(DEPTHS[bit_depth])}")


def encode(audio: np.ndarray, sample_rate: int, fmt: str = "wav", bit_depth: int = 16) -> EncodedAudio:
    """``bit_depth`` 16 (every format), 24 (wav, flac) or 32 (float wav: the samples as they are)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown output_format {fmt!r}; supported: {', '.join(FORMATS)}")
    check_depth(fmt, bit_depth)
    container, subtype, content_type, ext = FORMATS[fmt]
    subtype = DEPTHS[bit_depth].get(fmt, subtype)
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

"""Decoding an uploaded audio file (WAV, FLAC, Ogg Vorbis/Opus, MP3) with libsndfile, bounded."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

ACCEPTED = ("WAV", "FLAC", "OGG", "MP3")  # libsndfile major formats we take


class UndecodableAudio(ValueError):
    """The bytes are not audio we can read, or the audio is outside the limits; the message says which."""


def probe(data: bytes) -> sf._SoundFileInfo:
    """Header facts (format, rate, channels, frames) without decoding the samples."""
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as exc:  # libsndfile names what it could not read
        raise UndecodableAudio(f"not a readable audio file (wav, flac, ogg or mp3): {exc}") from None
    if info.format not in ACCEPTED:
        raise UndecodableAudio(f"audio format {info.format} is not accepted; send wav, flac, ogg or mp3")
    return info


def decode_audio(data: bytes, max_seconds: float, max_channels: int = 2) -> tuple[np.ndarray, int]:
    """bytes → (audio [C, N] float32, sample rate). Refuses more than ``max_seconds`` or
    ``max_channels``, rates outside 8–192 kHz, empty or non-finite audio."""
    info = probe(data)
    if not 8000 <= info.samplerate <= 192000:
        raise UndecodableAudio(f"sample rate {info.samplerate} Hz is outside 8000–192000 Hz")
    if not 1 <= info.channels <= max_channels:
        raise UndecodableAudio(f"{info.channels} channels; at most {max_channels} are accepted")
    # MP3 headers may not know the length: read at most the limit (+1 frame) and check what came out.
    limit = int(max_seconds * info.samplerate) + 1
    try:
        audio, rate = sf.read(io.BytesIO(data), frames=limit, dtype="float32", always_2d=True)
    except Exception as exc:
        raise UndecodableAudio(f"the audio could not be decoded: {exc}") from None
    if audio.shape[0] >= limit:
        raise UndecodableAudio(f"the clip is longer than {max_seconds:g} s")
    if audio.shape[0] == 0:
        raise UndecodableAudio("the clip holds no audio")
    if not np.isfinite(audio).all():
        raise UndecodableAudio("the clip holds non-finite samples")
    return np.ascontiguousarray(audio.T), int(rate)


def encode_flac(audio: np.ndarray, sample_rate: int) -> bytes:
    """[C, N] float32 → 24-bit FLAC (lossless for 16/24-bit sources; how uploads are kept)."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0).T, sample_rate, format="FLAC", subtype="PCM_24")
    return buf.getvalue()


def sample_range(length: int, rate: int, start: float = 0.0, end: float | None = None) -> slice:
    """The samples of a ``length``-sample clip from ``start`` to ``end`` seconds (default: its end)."""
    last = length if end is None else min(length, int(round(end * rate)))
    return slice(int(round(start * rate)), last)

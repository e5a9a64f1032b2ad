"""Decoding an uploaded audio file (WAV, FLAC, Ogg Vorbis/Opus, MP3) with libsndfile, bounded: uploads are
decoded block by block straight into the FLAC they are kept as, so memory does not grow with the clip."""

from __future__ import annotations

import io
from typing import BinaryIO

import numpy as np
import soundfile as sf

ACCEPTED = ("WAV", "FLAC", "OGG", "MP3")  # libsndfile major formats we take
BLOCK_FRAMES = 1 << 15  # frames decoded at a time: 256 KiB of float32 stereo


class UndecodableAudio(ValueError):
    """The bytes are not audio we can read, or the audio is outside the limits; the message says which."""


def _unreadable(exc: Exception) -> UndecodableAudio:
    """libsndfile's reason alone ("Format not recognised."), without the ``Error opening <object at 0x…>`` that
    soundfile puts before it (an object's address means nothing to the client)."""
    reason = getattr(exc, "error_string", None) or str(exc).rsplit(": ", 1)[-1]
    return UndecodableAudio(f"not a readable audio file (wav, flac, ogg or mp3): {reason}")


def probe(data: bytes) -> sf._SoundFileInfo:
    """Header facts (format, rate, channels, frames) without decoding the samples."""
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as exc:  # libsndfile names what it could not read
        raise _unreadable(exc) from None
    if info.format not in ACCEPTED:
        raise UndecodableAudio(f"audio format {info.format} is not accepted; send wav, flac, ogg or mp3")
    return info


def _check_shape(rate: int, channels: int, max_channels: int) -> None:
    if not 8000 <= rate <= 192000:
        raise UndecodableAudio(f"sample rate {rate} Hz is outside 8000–192000 Hz")
    if not 1 <= channels <= max_channels:
        raise UndecodableAudio(f"{channels} channels; at most {max_channels} are accepted")


def decode_to_flac(src: BinaryIO, dst: BinaryIO, max_seconds: float, max_channels: int = 2) -> tuple[int, int, int]:
    """Decode the file ``src`` block by block into a 24-bit FLAC written to ``dst`` (seekable), checking the
    limits of ``decode_audio`` as it goes; returns (sample rate, channels, frames). Memory holds one block
    whatever the clip's length, and the length is counted, not taken from the header (MP3s may not know)."""
    try:
        f = sf.SoundFile(src)
    except Exception as exc:  # libsndfile names what it could not read
        raise _unreadable(exc) from None
    with f:
        if f.format not in ACCEPTED:
            raise UndecodableAudio(f"audio format {f.format} is not accepted; send wav, flac, ogg or mp3")
        _check_shape(f.samplerate, f.channels, max_channels)
        limit, frames = int(max_seconds * f.samplerate), 0
        block = np.empty((BLOCK_FRAMES, f.channels), dtype=np.float32)
        with sf.SoundFile(dst, "w", f.samplerate, f.channels, subtype="PCM_24", format="FLAC") as out:
            while True:
                try:
                    got = f.read(out=block)
                except Exception as exc:
                    raise UndecodableAudio(f"the audio could not be decoded: {exc}") from None
                if len(got) == 0:
                    break
                frames += len(got)
                if frames > limit:
                    raise UndecodableAudio(f"the clip is longer than {max_seconds:g} s")
                if not np.isfinite(got).all():
                    raise UndecodableAudio("the clip holds non-finite samples")
                out.write(np.clip(got, -1.0, 1.0, out=got))
        if frames == 0:
            raise UndecodableAudio("the clip holds no audio")
        return int(f.samplerate), int(f.channels), frames


def decode_audio(data: bytes, max_seconds: float, max_channels: int = 2) -> tuple[np.ndarray, int]:
    """bytes → (audio [C, N] float32, sample rate). Refuses more than ``max_seconds`` or
    ``max_channels``, rates outside 8–192 kHz, empty or non-finite audio."""
    info = probe(data)
    _check_shape(info.samplerate, info.channels, max_channels)
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


def sample_range(length: int, rate: int, start: float = 0.0, end: float | None = None) -> slice:
    """The samples of a ``length``-sample clip from ``start`` to ``end`` seconds (default: its end)."""
    last = length if end is None else min(length, int(round(end * rate)))
    return slice(int(round(start * rate)), last)

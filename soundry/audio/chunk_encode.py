"""Encoding audio that arrives in chunks: ElevenLabs' ``output_format`` names, and a WAV stream.

ElevenLabs names a format ``codec_samplerate[_bitrate]`` (``mp3_44100_128``, ``pcm_16000``,
``ulaw_8000``…). ``ChunkEncoder`` turns float chunks [C, n] at the model's rate into bytes of such a
format as they come: downmixed to mono (ElevenLabs' sound effects are mono), resampled with soxr's
streaming resampler, and encoded at once — raw PCM and G.711 directly, WAV after a header that states
the final length, MP3 and Ogg Opus by libsndfile writing into an append-only sink. libsndfile's MP3
writer goes back at the end to fill in its LAME/Xing info frame; a stream cannot take that back, so
a streamed MP3 keeps the blank info frame (decoders play it as one silent frame, ~26 ms, and do not
trim the encoder delay). MP3/Opus bitrates are set through libsndfile's compression level, which maps
to kbps linearly (MPEG-1 32–320, MPEG-2 8–160, Opus ≈ 6–256), so they are close, not exact.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
_MP3 = ("22050_32", "24000_48", "44100_32", "44100_64", "44100_96", "44100_128", "44100_192")
_OPUS = ("48000_32", "48000_64", "48000_96", "48000_128", "48000_192")
_MEDIA = {"mp3": "audio/mpeg", "opus": "audio/ogg", "pcm": "audio/pcm", "wav": "audio/wav",
          "ulaw": "audio/basic", "alaw": "audio/x-alaw-basic"}


@dataclass(frozen=True)
class OutputFormat:
    name: str
    codec: str  # mp3 | opus | pcm (raw s16le) | wav (PCM 16) | ulaw | alaw (raw G.711)
    sample_rate: int
    bitrate_kbps: int | None = None

    @property
    def media_type(self) -> str:
        return _MEDIA[self.codec]



def _table() -> dict[str, OutputFormat]:
    out = {f"mp3_{s}": OutputFormat(f"mp3_{s}", "mp3", int(s.split("_")[0]), int(s.split("_")[1])) for s in _MP3}
    out |= {f"opus_{s}": OutputFormat(f"opus_{s}", "opus", 48000, int(s.split("_")[1])) for s in _OPUS}
    for codec in ("pcm", "wav"):
        out |= {f"{codec}_{r}": OutputFormat(f"{codec}_{r}", codec, r) for r in _RATES}
    out |= {"ulaw_8000": OutputFormat("ulaw_8000", "ulaw", 8000), "alaw_8000": OutputFormat("alaw_8000", "alaw", 8000)}
    return out


OUTPUT_FORMATS = _table()


def parse_output_format(name: str) -> OutputFormat:
    try:
        return OUTPUT_FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown output_format {name!r}; supported: {', '.join(OUTPUT_FORMATS)}") from None


def wav_header(sample_rate: int, channels: int, frames: int) -> bytes:
    """The 44-byte header of a PCM-16 WAV file of ``frames`` frames (written by the stdlib ``wave``)."""
    buf = io.BytesIO()
    w = wave.open(buf, "wb")  # noqa: SIM115 - only its header is wanted; never closed (that would seek)
    w.setnchannels(channels)
    w.setsampwidth(2)
    w.setframerate(sample_rate)
    w.setnframes(frames)
    w.writeframesraw(b"")
    return buf.getvalue()


def pcm16(audio: np.ndarray) -> bytes:
    """Float [C, n] → interleaved little-endian 16-bit PCM."""
    samples = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    return (samples.T * 32767.0).round().astype("<i2").tobytes()


def _mp3_level(fmt: OutputFormat) -> float:
    top, bottom = (320, 32) if fmt.sample_rate >= 32000 else (160, 8)  # MPEG-1 / MPEG-2 bitrate ranges
    return min(0.99, max(0.0, (top - fmt.bitrate_kbps) / (top - bottom)))


class _AppendOnly(io.RawIOBase):
    """A write target for libsndfile that hands out bytes as they are appended; a later rewrite of
    bytes already handed out (MP3's info frame) is dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.size = self.pos = 0
        self.fresh = bytearray()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data) -> int:
        data = bytes(data)
        if self.pos >= self.size:
            self.fresh += data
            self.size = self.pos + len(data)
        self.pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.size + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def take(self) -> bytes:
        out, self.fresh = bytes(self.fresh), bytearray()
        return out


class ChunkEncoder:
    """Float chunks [C, n] at ``in_rate`` → bytes of ``fmt`` as they come; ``total_in`` input samples in all.

    The output has exactly ``round(total_in * out_rate / in_rate)`` samples (the resampler's tail is
    trimmed or zero-padded to it), so a WAV header can state the length before the audio exists."""

    def __init__(self, fmt: OutputFormat, in_rate: int, total_in: int):
        self.fmt, self.in_rate = fmt, in_rate
        self.total_out = int(round(total_in * fmt.sample_rate / in_rate))
        self.sent = 0
        self._resampler = (soxr.ResampleStream(in_rate, fmt.sample_rate, 1, dtype="float32", quality="HQ")
                           if in_rate != fmt.sample_rate else None)
        self._sink: _AppendOnly | None = None
        self._writer: sf.SoundFile | None = None
        if fmt.codec in ("mp3", "opus"):
            self._sink = _AppendOnly()
            if fmt.codec == "mp3":
                kw = {"format": "MP3", "subtype": "MPEG_LAYER_III", "compression_level": _mp3_level(fmt),
                      "bitrate_mode": "CONSTANT"}
            else:
                kw = {"format": "OGG", "subtype": "OPUS",
                      "compression_level": min(0.99, max(0.0, (256 - fmt.bitrate_kbps) / 250))}
            self._writer = sf.SoundFile(self._sink, "w", samplerate=fmt.sample_rate, channels=1, **kw)

    def header(self) -> bytes:
        return wav_header(self.fmt.sample_rate, 1, self.total_out) if self.fmt.codec == "wav" else b""

    def push(self, audio: np.ndarray, last: bool = False) -> bytes:
        mono = np.asarray(audio, dtype=np.float32).mean(axis=0)
        if self._resampler is not None:
            mono = self._resampler.resample_chunk(mono, last=last)
        room = max(0, self.total_out - self.sent)
        mono = mono[:room]
        if last:  # exactly total_out samples
            mono = np.concatenate([mono, np.zeros(room - len(mono), np.float32)])
        self.sent += len(mono)
        mono = np.clip(mono, -1.0, 1.0)
        if self.fmt.codec in ("pcm", "wav"):
            return pcm16(mono[None])
        if self._writer is None:  # headerless G.711: chunks concatenate
            buf = io.BytesIO()
            sf.write(buf, mono, self.fmt.sample_rate, format="RAW", subtype=self.fmt.codec.upper())
            return buf.getvalue()
        if len(mono):
            self._writer.write(mono)
        if last:
            self._writer.close()
        return self._sink.take()

    def finish(self) -> bytes:
        return self.push(np.zeros((1, 0), np.float32), last=True)

"""Audio output: loudness/peak/RMS normalisation and encoding to WAV, FLAC, OGG (Vorbis/Opus), MP3."""

from soundry.audio.encode import FORMATS, EncodedAudio, encode
from soundry.audio.normalize import NORMALIZATIONS, normalize

__all__ = ["FORMATS", "NORMALIZATIONS", "EncodedAudio", "encode", "normalize"]

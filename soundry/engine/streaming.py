"""Audio while it is generated: a request's finished frames, decoded chunk by chunk.

A job's frame ``t`` is final once the step that writes its last codebook has run (delay pattern:
step ``t + max_delay``). ``StreamTap`` takes the frames that became final since its last call —
from the job's finished windows (``job.pieces``) and the current window's codes in the batch — and
hands them to an ``IncrementalDecoder``, which decodes each chunk with a bounded left context (so
the cost of a stream is linear in its length) and crossfades the seams. The stream's audio is close
to, not bit-equal with, the final file: the codec (SEANet convolutions and, in EnCodec, an LSTM)
sees a truncated past and a few frames of future at each chunk; tests measure the SNR.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

log = logging.getLogger(__name__)


class AudioSink(Protocol):
    """Where a request's streamed audio goes (e.g. a task's live channel)."""

    @property
    def wanted(self) -> bool: ...  # decode only while someone listens; a late listener gets it all from frame 0

    def push(self, audio: np.ndarray) -> None: ...  # [C, n] float32, in order, the last one with the final sample


def final_frames(job, batch) -> int:
    """Frames of ``job`` whose codes are final (all codebooks sampled), counted over all its windows."""
    done = sum(p.shape[-1] for p in job.pieces)
    if job.slot >= 0:
        w = job.current
        done += max(0, min(job.step - batch.max_delay, w.length) - w.prompt)
    return done


def frames_between(job, batch, start: int, end: int) -> torch.Tensor:
    """The job's new codes for frames [start, end) as a new tensor [K, end - start] on the batch's device
    (a copy: the slot's codes may be overwritten once the job leaves). No host transfer here: this runs
    on the engine thread, and the codec thread reads the codes back when it decodes them."""
    if end <= start:
        return torch.zeros(batch.K, 0, dtype=torch.long, device=batch.device)
    parts, offset = [], 0
    for piece in job.pieces:
        n = piece.shape[-1]
        lo, hi = max(start, offset), min(end, offset + n)
        if lo < hi:
            parts.append(piece[:, lo - offset: hi - offset])
        offset += n
    if end > offset and job.slot >= 0:
        p = job.current.prompt
        parts.append(batch.codes[job.slot, :, p + max(start, offset) - offset: p + end - offset])
    return torch.cat(parts, dim=-1)


class IncrementalDecoder:
    """Codes that arrive in order → audio, one chunk at a time.

    Each chunk decodes ``left`` frames already emitted (context) plus everything new, emits audio up
    to ``hold`` frames before the newest frame (those lack right context), and keeps that held-back
    audio to crossfade (linearly: both sides are estimates of the same signal) into the next chunk.
    Output stops at ``total_samples``; the final call emits the rest."""

    def __init__(self, decode: Callable[[torch.Tensor], torch.Tensor], hop: int, total_samples: int,
                 left: int = 50, hold: int = 5):
        self.decode, self.hop, self.total = decode, hop, total_samples
        self.left, self.hold = left, hold
        self.codes: torch.Tensor | None = None  # frames [self.offset, self.frames)
        self.offset = self.frames = self.emitted = self.samples = 0
        self.tail: np.ndarray | None = None  # audio of frames [emitted, last decoded frame) from the last chunk

    def push(self, codes: torch.Tensor, final: bool = False) -> np.ndarray:
        self.codes = codes if self.codes is None else torch.cat([self.codes, codes], dim=-1)
        self.frames += codes.shape[-1]
        end = self.frames if final else self.frames - self.hold
        if end <= self.emitted or self.codes.shape[-1] == 0:
            return np.zeros((0, 0), np.float32)
        start = max(self.offset, self.emitted - self.left)
        audio = self.decode(self.codes[None, :, start - self.offset:])[0].float().cpu().numpy()
        a, b = (self.emitted - start) * self.hop, (end - start) * self.hop
        out = audio[:, a:b].copy()
        if self.tail is not None and self.tail.shape[-1]:
            n = min(self.tail.shape[-1], out.shape[-1])
            ramp = (np.arange(n, dtype=np.float32) + 0.5) / n
            out[:, :n] = self.tail[:, :n] * (1 - ramp) + out[:, :n] * ramp
        self.tail = audio[:, b:]
        self.emitted = end
        keep_from = max(0, end - self.left)  # bounded memory and per-chunk cost
        self.codes = self.codes[:, keep_from - self.offset:]
        self.offset = keep_from
        out = out[:, : max(0, self.total - self.samples)]
        self.samples += out.shape[-1]
        return out


class StreamTap:
    """One request's stream: takes its final frames after each decode step and decodes them (on the
    codec thread) into its sink, ``chunk`` frames at a time; nothing is decoded while unwanted."""

    def __init__(self, sink: AudioSink, decoder: IncrementalDecoder, chunk: int):
        self.sink, self.decoder, self.chunk = sink, decoder, chunk
        self.taken = 0
        self.broken = False

    def take(self, job, batch, final: bool) -> torch.Tensor | None:
        """The codes to decode now (None: not enough yet, or nobody listens)."""
        if self.broken or not self.sink.wanted:
            return None
        ready = final_frames(job, batch)
        if not final and ready - self.taken < self.chunk:
            return None
        codes = frames_between(job, batch, self.taken, ready)
        self.taken = ready
        return codes

    def decode_into_sink(self, codes: torch.Tensor, final: bool) -> None:
        if self.broken:
            return
        try:
            audio = self.decoder.push(codes, final)
            if audio.size:
                self.sink.push(audio)
        except Exception:  # a stream must never break generation; its listeners get the final file
            log.exception("streaming decode failed")
            self.broken = True

"""Tasks' audio while it is generated, for listeners in the same process (embedded mode).

The runner opens a channel when it starts a task and closes it when the task ends. The engine
decodes a stream only once somebody listens (``wanted``); it then starts from the first frame, and
the channel keeps every chunk until the task ends, so a listener that joins late hears it all.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import numpy as np


class AudioChannel:
    """One task's streamed audio: chunks [C, n] float32 at ``sample_rate``, ``total_samples`` in all."""

    poll_interval = 0.02  # seconds between a listener's looks (memory only: cheap)

    def __init__(self, sample_rate: int, total_samples: int):
        self.sample_rate, self.total_samples = sample_rate, total_samples
        self.chunks: list[np.ndarray] = []
        self.samples = 0
        self.closed = False
        self.listeners = 0
        self._lock = threading.Lock()

    @property
    def wanted(self) -> bool:
        return self.listeners > 0

    def push(self, audio: np.ndarray) -> None:
        with self._lock:
            if not self.closed:
                self.chunks.append(np.asarray(audio, dtype=np.float32))
                self.samples += audio.shape[-1]

    def close(self) -> None:
        self.closed = True

    @property
    def complete(self) -> bool:
        return self.samples >= self.total_samples

    async def refresh(self) -> None:
        """Nothing to fetch: the engine pushes into this process (see live_redis for the other case)."""

    def attach(self) -> None:
        with self._lock:
            self.listeners += 1

    def detach(self) -> None:
        with self._lock:
            self.listeners -= 1

    async def audio(self, poll: float = poll_interval) -> AsyncIterator[np.ndarray]:
        """Every chunk from the first, as it arrives, until the clip is complete or the channel
        closes. The caller must have attached; this detaches when it ends."""
        try:
            sent = 0
            while True:
                with self._lock:
                    new, closed = self.chunks[sent:], self.closed
                for chunk in new:
                    yield chunk
                sent += len(new)
                if (closed or self.complete) and sent == len(self.chunks):
                    return
                await asyncio.sleep(poll)
        finally:
            self.detach()


class LiveAudio:
    """task id → its open channel."""

    def __init__(self) -> None:
        self._channels: dict[str, AudioChannel] = {}
        self._lock = threading.Lock()

    def open(self, task_id: str, sample_rate: int, total_samples: int) -> AudioChannel:
        channel = AudioChannel(sample_rate, total_samples)
        with self._lock:
            self._channels[task_id] = channel
        return channel

    def get(self, task_id: str) -> AudioChannel | None:
        with self._lock:
            return self._channels.get(task_id)

    def close(self, task_id: str) -> None:
        with self._lock:
            channel = self._channels.pop(task_id, None)
        if channel is not None:
            channel.close()

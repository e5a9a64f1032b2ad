"""Tasks' audio while it is generated, for listeners in the same process (embedded mode).

The runner opens a channel when it starts a task and closes it when the task ends. The engine
decodes a stream only once somebody listens (``wanted``); it then starts from the first frame, and
the channel keeps every chunk until the task ends, so a listener that joins late hears it all. The
chunks are kept in an unnamed temporary file (``TMPDIR``), not in memory: a channel holds only their
offsets, so a long task's live audio costs disk (at most its clip: duration x rate x channels x 4
bytes), and the file goes when the channel does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import threading
import weakref
from collections.abc import AsyncIterator

import numpy as np

log = logging.getLogger(__name__)


class AudioChannel:
    """One task's streamed audio: chunks [C, n] float32 at ``sample_rate``, ``total_samples`` in all."""

    poll_interval = 0.02  # seconds between a listener's looks (the page cache: cheap)

    def __init__(self, sample_rate: int, total_samples: int, directory: str | None = None):
        self.sample_rate, self.total_samples = sample_rate, total_samples
        self.samples = 0
        self.closed = False
        self.listeners = 0
        self._lock = threading.Lock()
        self._index: list[tuple[int, int, int]] = []  # per chunk: byte offset in the file, channels, samples
        self._end = 0
        self._directory = directory
        self._fd: int | None = None  # made at the first chunk (only tasks somebody listens to have chunks)

    def _file(self) -> int:
        if self._fd is None:
            fd, path = tempfile.mkstemp(prefix="soundry-live-", dir=self._directory)
            os.unlink(path)  # unnamed: nobody else opens it, and it goes with its descriptor
            self._fd = fd
            weakref.finalize(self, os.close, fd)
        return self._fd

    @property
    def wanted(self) -> bool:
        return self.listeners > 0

    @property
    def chunk_count(self) -> int:
        return len(self._index)

    def push(self, audio: np.ndarray) -> None:
        chunk = np.ascontiguousarray(audio, dtype=np.float32)
        with self._lock:
            if self.closed:
                return
            try:
                if os.pwrite(self._file(), chunk.tobytes(), self._end) != chunk.nbytes:
                    raise OSError("short write (is the disk full?)")
            except OSError as exc:  # e.g. a full disk: the stream ends short, the task goes on
                log.warning("live audio stream stopped: %s", exc)
                self.closed = True
            else:
                self._index.append((self._end, chunk.shape[0], chunk.shape[-1]))
                self._end += chunk.nbytes
                self.samples += chunk.shape[-1]

    def chunk(self, i: int) -> np.ndarray:
        """The ``i``-th chunk pushed, read back from the file."""
        offset, channels, n = self._index[i]
        return np.frombuffer(os.pread(self._fd, channels * n * 4, offset), dtype=np.float32).reshape(channels, n)

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
                    count, closed = len(self._index), self.closed
                for i in range(sent, count):
                    yield self.chunk(i)
                sent = count
                if (closed or self.complete) and sent == self.chunk_count:
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

"""Live audio across processes when the broker is Redis: workers write each task's chunks to a Redis
stream, API processes read them (distributed mode).

Keys (they expire an hour after the last write): ``soundry:live:<task>`` a stream whose entries are
``{"rate", "total", "channels", "pcm"}`` (PCM 16-bit little-endian, interleaved) and, last,
``{"end": "1"}``; ``soundry:live:<task>:listening`` set by readers while they listen (10 s expiry,
renewed) — a worker decodes a task's stream only while that key exists, and a reader that arrives
late gets every chunk from the first.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator

import numpy as np

TTL = 3600
LISTEN_TTL = 10
WANTED_CHECK = 0.5  # seconds between a worker's checks for listeners
READ_BATCH = 16  # entries (about a second each) a reader fetches at once: what it holds in memory


def _stream_key(task_id: str) -> str:
    return f"soundry:live:{task_id}"


class RedisChannelWriter:
    """A worker's sink for one task (see ``engine.streaming.AudioSink``)."""

    def __init__(self, client, task_id: str, sample_rate: int, total_samples: int):
        self.client, self.key = client, _stream_key(task_id)
        self.sample_rate, self.total_samples = sample_rate, total_samples
        self._wanted, self._checked = False, 0.0

    @property
    def wanted(self) -> bool:  # asked after every decode step: Redis is asked at most every WANTED_CHECK s
        now = time.monotonic()
        if now - self._checked >= WANTED_CHECK:
            self._checked = now
            try:
                self._wanted = self._wanted or bool(self.client.exists(self.key + ":listening"))
            except Exception:  # Redis away: no stream, generation goes on
                self._wanted = False
        return self._wanted

    def push(self, audio: np.ndarray) -> None:
        from soundry.audio.chunk_encode import pcm16

        pipe = self.client.pipeline()
        pipe.xadd(self.key, {"rate": self.sample_rate, "total": self.total_samples, "channels": audio.shape[0],
                             "pcm": pcm16(audio)})
        pipe.expire(self.key, TTL)
        pipe.execute()

    def close(self) -> None:
        pipe = self.client.pipeline()
        pipe.xadd(self.key, {"end": "1"})
        pipe.expire(self.key, TTL)
        pipe.execute()


class RedisLiveWriter:
    """The worker side: ``open``/``close`` like ``LiveAudio``."""

    def __init__(self, url: str):
        import redis

        self.client = redis.Redis.from_url(url)

    def open(self, task_id: str, sample_rate: int, total_samples: int) -> RedisChannelWriter:
        self.client.delete(_stream_key(task_id))  # a previous attempt's chunks
        return RedisChannelWriter(self.client, task_id, sample_rate, total_samples)

    def close(self, task_id: str) -> None:
        try:
            RedisChannelWriter(self.client, task_id, 0, 0).close()
        except Exception:  # noqa: BLE001 - listeners then wait for the task's end instead
            pass


class RedisChannelReader:
    """The API side of one task's stream, with ``AudioChannel``'s reading interface."""

    poll_interval = 0.05  # seconds between reads of the stream (a Redis round trip each)

    def __init__(self, client, task_id: str):
        self.client, self.key = client, _stream_key(task_id)
        self.sample_rate = self.total_samples = self.samples = 0
        self.chunks: deque[np.ndarray] = deque()  # read from Redis, not yet sent (a reader serves one listener)
        self.closed = False
        self._last_id = "0-0"

    @property
    def complete(self) -> bool:
        return self.total_samples > 0 and self.samples >= self.total_samples

    def attach(self) -> None:
        pass  # refresh() keeps the listening key alive

    def detach(self) -> None:
        pass  # the key expires LISTEN_TTL after the last refresh

    async def refresh(self) -> None:
        """Read the entries written since the last call; renew the listening key."""
        pipe = self.client.pipeline()
        pipe.set(self.key + ":listening", "1", ex=LISTEN_TTL)
        pipe.xread({self.key: self._last_id}, count=READ_BATCH)
        _, entries = await pipe.execute()
        for _key, items in entries or []:
            for entry_id, fields in items:
                self._last_id = entry_id
                if b"end" in fields:
                    self.closed = True
                    continue
                self.sample_rate, self.total_samples = int(fields[b"rate"]), int(fields[b"total"])
                pcm = np.frombuffer(fields[b"pcm"], "<i2").astype(np.float32) / 32767.0
                chunk = pcm.reshape(-1, int(fields[b"channels"])).T
                self.chunks.append(chunk)
                self.samples += chunk.shape[-1]

    async def audio(self, poll: float = poll_interval, stall: float = 120.0) -> AsyncIterator[np.ndarray]:
        """Every chunk from the first until the end marker; gives up after ``stall`` s without one
        (a worker that died mid-task writes no end)."""
        last_new = time.monotonic()
        while True:
            if self.chunks:
                last_new = time.monotonic()
            while self.chunks:
                yield self.chunks.popleft()
            if self.closed or self.complete or time.monotonic() - last_new > stall:
                return
            await asyncio.sleep(poll)
            await self.refresh()


class RedisLiveReader:
    """The API side: ``get(task_id)`` like ``LiveAudio`` (a reader for any task; it may stay empty)."""

    def __init__(self, url: str):
        import redis.asyncio

        self.client = redis.asyncio.Redis.from_url(url)

    def get(self, task_id: str) -> RedisChannelReader:
        return RedisChannelReader(self.client, task_id)

"""A bounded, thread-safe cache of melody chroma, so a melody reused (another prompt on the same upload, a
retry of a seeded task) is not separated into stems again. Keys say what the chroma depends on: the melody's
digest, the window's start and demucs's time shift (``AudioModel.melody_chromas``)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

import torch


class ChromaCache:
    """Least recently used entries go first once ``capacity`` is reached (a chroma is ~11 KB: 235 × 12 floats)."""

    def __init__(self, capacity: int = 256):
        self.capacity = capacity
        self._items: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> torch.Tensor | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def __setitem__(self, key: Hashable, value: torch.Tensor) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

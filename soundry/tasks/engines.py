"""One engine per model name, loaded on first use; load failures are remembered for a while so
every task of an unavailable model fails fast with the same reason."""

from __future__ import annotations

import logging
import threading
import time
from functools import partial
from pathlib import Path

from soundry.engine import Engine
from soundry.models.registry import canonical_name

log = logging.getLogger(__name__)


class ModelUnavailable(RuntimeError):
    pass


class EngineManager:
    """``precision``, ``max_text_tokens`` and ``packed_weights`` go to the default loader; ``compile``
    and ``compile_cache`` to each Engine."""

    def __init__(self, max_batch: int = 16, retry_after: float = 60.0, loader=None, precision: str = "auto",
                 compile: bool = False, compile_cache: Path | None = None, max_text_tokens: int | None = None,
                 packed_weights: bool = True, kv_cache_memory: float = 0.9, fused_heads: bool = False,
                 rng: str = "generator", attention: str = "masked"):
        self.max_batch, self.retry_after = max_batch, retry_after
        self.kv_cache_memory, self.rng, self.attention = kv_cache_memory, rng, attention
        self.precision, self.compile, self.compile_cache = precision, compile, compile_cache
        self._engines: dict[str, Engine] = {}
        self._failures: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        if loader is None:
            from soundry.models import load_model

            loader = partial(load_model, precision=precision, max_text_tokens=max_text_tokens,
                             packed=packed_weights, fused_heads=fused_heads)
        self._loader = loader

    @classmethod
    def from_settings(cls, settings) -> EngineManager:
        return cls(max_batch=settings.max_batch, max_text_tokens=settings.max_text_tokens,
                   precision=settings.precision, compile=settings.compile, compile_cache=settings.compile_cache,
                   packed_weights=settings.packed_weights, kv_cache_memory=settings.kv_cache_memory,
                   fused_heads=settings.fused_heads, rng=settings.rng, attention=settings.attention)

    def key(self, name: str) -> str:
        try:
            return canonical_name(name)
        except KeyError:
            return name

    def get(self, name: str) -> Engine:
        key = self.key(name)
        with self._lock:
            if key in self._engines:
                return self._engines[key]
            failed = self._failures.get(key)
            if failed and time.monotonic() - failed[0] < self.retry_after:
                raise ModelUnavailable(failed[1])
            lock = self._loading.setdefault(key, threading.Lock())
        with lock:  # one loader per model; others wait for it
            with self._lock:
                if key in self._engines:
                    return self._engines[key]
            try:
                model = self._loader(name)
            except Exception as exc:
                reason = f"model {name} could not be loaded: {exc}"
                log.error(reason)
                with self._lock:
                    self._failures[key] = (time.monotonic(), reason)
                raise ModelUnavailable(reason) from exc
            engine = Engine(model, max_batch=self.max_batch, compile=self.compile,
                            compile_cache=self.compile_cache, kv_cache_memory=self.kv_cache_memory,
                            rng=self.rng, attention=self.attention).start()
            with self._lock:
                self._engines[key] = engine
                self._failures.pop(key, None)
            return engine

    def loaded(self) -> dict[str, Engine]:
        with self._lock:
            return dict(self._engines)

    def failures(self) -> dict[str, str]:
        with self._lock:
            return {k: v[1] for k, v in self._failures.items()}

    def cancel(self, task_id: str) -> bool:
        return any(e.cancel(task_id) for e in self.loaded().values())

    def stop(self) -> None:
        for engine in self.loaded().values():
            engine.stop()

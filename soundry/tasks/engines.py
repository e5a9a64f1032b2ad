"""One engine per model name, loaded on first use; load failures are remembered for a while so
every task of an unavailable model fails fast with the same reason. Also the MultiBand Diffusion decoder
(``configs.decoder`` "mbd"), loaded once per process for the MusicGen models that ask for it."""

from __future__ import annotations

import logging
import threading
import time
from functools import partial
from pathlib import Path

import torch

from soundry.engine import Engine
from soundry.models.catalog import canonical_name

log = logging.getLogger(__name__)


class ModelUnavailable(RuntimeError):
    pass


MBD_REPO = "facebook/multiband-diffusion"
MBD_PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}  # the U-Nets' dtype on a GPU; float32 elsewhere


def mbd_weights(mbd_path: str = "") -> Path:
    """MultiBand Diffusion's release file: ``mbd_path`` (a folder holding it, or the file), else the hub's
    (from the local cache, else downloaded). Raises ModelUnavailable with a sentence naming the setting."""
    from soundry.models.audiocraft.codecs.mbd import RELEASE_FILE

    if mbd_path:
        path = Path(mbd_path).expanduser()
        path = path / RELEASE_FILE if path.is_dir() else path
        if not path.is_file():
            raise ModelUnavailable(f"MultiBand Diffusion: the mbd_path setting names {mbd_path}, which is neither "
                                   f"{RELEASE_FILE} nor a folder holding it")
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(MBD_REPO, RELEASE_FILE, local_files_only=True))
    except Exception:  # not cached yet
        pass
    try:
        return Path(hf_hub_download(MBD_REPO, RELEASE_FILE))
    except Exception as exc:
        raise ModelUnavailable(f"MultiBand Diffusion weights ({MBD_REPO}) are not in the local cache and the hub is "
                               f"unreachable ({type(exc).__name__}); set mbd_path (SOUNDRY_MBD_PATH) to a folder "
                               f"holding {RELEASE_FILE}") from exc


class EngineManager:
    """``precision``, ``max_text_tokens`` and ``packed_weights`` (the loader's ``packed``: ``Settings.linear_kernel``)
    go to the default loader; ``compile`` and ``compile_cache`` to each Engine."""

    def __init__(self, max_batch: int = 16, retry_after: float = 60.0, loader=None, precision: str = "auto",
                 compile: bool = False, compile_cache: Path | None = None, max_text_tokens: int | None = None,
                 packed_weights: bool | str = True, kv_cache_memory: float = 0.9, fused_heads: bool = False,
                 rng: str = "generator", attention: str = "masked", mbd_path: str = "", melody_separations: int = 1,
                 diffusion_memory: float = 0.9):
        self.max_batch, self.retry_after = max_batch, retry_after
        # melody stem separations at once in this process, over all its engines (each takes every core; queued beyond)
        self.separations = threading.BoundedSemaphore(max(1, melody_separations))
        self.kv_cache_memory, self.rng, self.attention = kv_cache_memory, rng, attention
        self.diffusion_memory = diffusion_memory
        self.precision, self.compile, self.compile_cache = precision, compile, compile_cache
        self._engines: dict[str, Engine] = {}
        self._failures: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self.mbd_path = mbd_path
        self._mbd: dict[tuple, object] = {}  # (release file, model, dtype) -> MultiBandDiffusion
        self._mbd_failures: dict[str, tuple[float, str]] = {}  # model -> (when, reason)
        self._mbd_lock = threading.Lock()
        if loader is None:
            from soundry.models import load_model

            loader = partial(load_model, precision=precision, max_text_tokens=max_text_tokens,
                             packed=packed_weights, fused_heads=fused_heads)
        self._loader = loader

    @classmethod
    def from_settings(cls, settings) -> EngineManager:
        return cls(max_batch=settings.max_batch, max_text_tokens=settings.max_text_tokens,
                   precision=settings.precision, compile=settings.compile, compile_cache=settings.compile_cache,
                   packed_weights=settings.linear_kernel, kv_cache_memory=settings.kv_cache_memory,
                   fused_heads=settings.fused_heads, rng=settings.rng, attention=settings.attention,
                   mbd_path=settings.mbd_path, melody_separations=settings.melody_separations,
                   diffusion_memory=settings.diffusion_memory)

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
            engine = self._engine_for(model).start()
            with self._lock:
                self._engines[key] = engine
                self._failures.pop(key, None)
            return engine

    def mbd(self, engine: Engine):
        """The MultiBand Diffusion decoder of ``engine``'s model, loaded on first use and kept for the process:
        its weights once per (release file, device, dtype), shared by every model (each bound to its own codec:
        ``MultiBandDiffusion.with_codec``) and all their tasks. A failure
        is remembered for ``retry_after`` seconds, as for models, so the tasks behind it fail at once with the
        same reason (ModelUnavailable)."""
        with self._mbd_lock:  # a load takes seconds: the tasks of other models wait for it (rare, once)
            name = engine.model.name
            failed = self._mbd_failures.get(name)
            if failed and time.monotonic() - failed[0] < self.retry_after:
                raise ModelUnavailable(failed[1])
            codec = engine.model.codec
            device = next(codec.parameters()).device
            dtype = MBD_PRECISIONS.get(engine.model.precision, torch.float32) if device.type == "cuda" else \
                torch.float32
            try:
                path = mbd_weights(self.mbd_path)
                key = (str(path.resolve()), name, dtype)
                if key not in self._mbd:
                    from soundry.models.audiocraft.codecs.mbd import load_mbd

                    loaded = next((m for (p, _n, d), m in self._mbd.items() if (p, d) == (key[0], dtype)
                                   and m.device == device), None)
                    self._mbd[key] = loaded.with_codec(codec) if loaded is not None else \
                        load_mbd(path, codec, dtype=dtype)
            except Exception as exc:
                reason = str(exc) if isinstance(exc, ModelUnavailable) else \
                    f"MultiBand Diffusion could not be loaded for {name}: {exc}"
                log.error(reason)
                self._mbd_failures[name] = (time.monotonic(), reason)
                raise ModelUnavailable(reason) from exc
            self._mbd_failures.pop(name, None)
            return self._mbd[key]

    def _engine_for(self, model):
        """The engine of the model's family: continuous batching of decode steps, or of denoising steps."""
        if getattr(model, "is_diffusion", False):
            from soundry.engine.diffusion.engine import DiffusionEngine

            return DiffusionEngine(model, max_batch=self.max_batch, memory_fraction=self.diffusion_memory)
        return Engine(model, max_batch=self.max_batch, compile=self.compile, compile_cache=self.compile_cache,
                      kv_cache_memory=self.kv_cache_memory, rng=self.rng, attention=self.attention,
                      separations=self.separations)

    def loaded(self) -> dict[str, Engine]:
        with self._lock:
            return dict(self._engines)

    def loading(self) -> set[str]:
        """The models being loaded right now (their loader runs)."""
        with self._lock:
            return {key for key, lock in self._loading.items() if lock.locked() and key not in self._engines}

    def failures(self) -> dict[str, str]:
        with self._lock:
            return {k: v[1] for k, v in self._failures.items()}

    def cancel(self, task_id: str) -> bool:
        return any(e.cancel(task_id) for e in self.loaded().values())

    def stop(self) -> None:
        for engine in self.loaded().values():
            engine.stop()

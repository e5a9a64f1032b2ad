"""The decode loop never waits for the device: no tensor is read back to the host on the engine thread
(``.cpu()``, ``.item()``, ``int(t)``, ``.tolist()``, ``.numpy()``, ``bool(t)``) while it admits, steps and
streams, and nothing is copied to the device from pageable host memory with a blocking copy (a
``cudaStreamSynchronize`` on a GPU). On the CPU these are free, so the test records the calls themselves:
on a GPU each would stall the LM until all the work queued before it had run. Streamed chunks and
finished codes are read back on the codec thread instead."""

from __future__ import annotations

import threading
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

import soundry.models.transfer
from soundry.engine import Engine, GenerationRequest
from tests.helpers_models import tiny_model
from tests.test_streaming_engine import Collect

READBACKS = ("cpu", "item", "tolist", "numpy", "__int__", "__float__", "__index__")
# factories that build a tensor on the host unless given a device; torch.tensor/as_tensor given one copy host data
FACTORIES = (torch.tensor, torch.as_tensor, torch.arange, torch.zeros, torch.ones, torch.full, torch.empty,
             torch.rand, torch.randn, torch.randint, torch.linspace)
TRANSFER = Path(soundry.models.transfer.__file__)  # to_device: pinned, non-blocking copies on a GPU


def _on_host(t) -> bool:
    return isinstance(t, torch.Tensor) and getattr(t, "_soundry_host", False)


def _site() -> traceback.FrameSummary:
    """The first frame outside torch and this file: the code that asked for the op."""
    return next(f for f in reversed(traceback.extract_stack())
                if "/torch/" not in f.filename and f.filename != __file__)


class HostCopies(TorchFunctionMode):
    """On the engine thread (a thread-local mode): which tensors live on the host — built from host data
    (``torch.from_numpy``, a list, a factory without ``device=``) or computed from such tensors alone; any
    tensor it has not seen made (weights, caches, a request's codes) counts as the device's — and the ops
    that would wait for the device on a GPU: a host tensor copied to the device without ``non_blocking``
    other than through ``transfer.to_device``, a host tensor (not a 0-dim scalar) meeting a device tensor
    in an op (an implicit blocking copy), data copied by ``torch.tensor(..., device=)``, ``bool(t)`` or
    another read-back of a device tensor."""

    def __init__(self, calls: list[str]):
        super().__init__()
        self.calls = calls

    def _record(self, what: str) -> None:
        site = _site()
        self.calls.append(f"{what} in {site.name} ({site.filename}:{site.lineno})")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        host = [t for t in tensors if _on_host(t)]
        name = getattr(func, "__name__", "")
        moves = name in ("to", "cuda") and (
            name == "cuda" or "device" in kwargs
            or any(isinstance(a, torch.device | str | int) for a in args[1:]))
        if name in ("__bool__", "item", "tolist", "__float__", "__int__", "__index__") and not host:
            self._record(f"{name} of a device tensor")
        elif moves and _on_host(args[0]) and not kwargs.get("non_blocking") and _site().filename != str(TRANSFER):
            self._record(f"blocking host-to-device .{name}()")
        elif func in (torch.tensor, torch.as_tensor) and kwargs.get("device") is not None:
            self._record(f"{name}(data, device=...) copies host data blocking")
        elif not moves and host and len(host) < len(tensors) and any(t.dim() > 0 for t in host):
            self._record(f"a host tensor meets a device tensor in {name}")
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            made_on_host = func in FACTORIES and kwargs.get("device") is None
            out._soundry_host = not moves and (made_on_host or bool(tensors) and len(host) == len(tensors))
        return out


def _record_on_engine_thread(monkeypatch, calls: list[str]) -> None:
    for name in READBACKS:
        original = getattr(torch.Tensor, name)

        def recording(self, *args, _name=name, _original=original, **kwargs):
            if threading.current_thread().name.startswith("soundry-engine"):
                caller = traceback.extract_stack()[-2]
                calls.append(f"{_name} in {caller.name} ({caller.filename}:{caller.lineno})")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, recording)
    from_numpy = torch.from_numpy

    def host_array(a: np.ndarray) -> torch.Tensor:
        t = from_numpy(a)
        t._soundry_host = True
        return t

    monkeypatch.setattr(torch, "from_numpy", host_array)
    run = Engine._run

    def traced(self):
        with HostCopies(calls):
            run(self)

    monkeypatch.setattr(Engine, "_run", traced)


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_no_tensor_is_read_back_on_the_engine_thread(monkeypatch, static):
    model = tiny_model("audiogen")
    calls: list[str] = []
    _record_on_engine_thread(monkeypatch, calls)
    engine = Engine(model, max_batch=2, static_steps=static).start()
    try:
        sinks = [Collect(), Collect()]
        futures = [engine.submit(GenerationRequest(p, 2.5, seed=s), sink=sink)
                   for p, s, sink in (("rain", 1, sinks[0]), ("a dog barking twice", 2, sinks[1]))]
        results = [f.result(timeout=120) for f in futures]
    finally:
        engine.stop()
    assert all(r.audio.shape[-1] > 0 for r in results) and all(s.chunks for s in sinks)
    assert calls == [], sorted(set(calls))

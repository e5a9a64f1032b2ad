"""The decode loop never waits for the device: no tensor is read back to the host on the engine thread
(``.cpu()``, ``.item()``, ``int(t)``, ``.tolist()``, ``.numpy()``) while it admits, steps and streams.
On the CPU these are free, so the test records the calls themselves: on a GPU each would stall the
LM until all the work queued before it had run. Streamed chunks and finished codes are read back on
the codec thread instead."""

from __future__ import annotations

import threading
import traceback

import torch

from soundry.engine import Engine, GenerationRequest
from tests.helpers_models import tiny_model
from tests.test_streaming_engine import Collect

READBACKS = ("cpu", "item", "tolist", "numpy", "__int__", "__float__", "__index__")


def test_no_tensor_is_read_back_on_the_engine_thread(monkeypatch):
    model = tiny_model("audiogen")
    calls: list[str] = []
    for name in READBACKS:
        original = getattr(torch.Tensor, name)

        def recording(self, *args, _name=name, _original=original, **kwargs):
            if threading.current_thread().name.startswith("soundry-engine"):
                caller = traceback.extract_stack()[-2]
                calls.append(f"{_name} in {caller.name} ({caller.filename}:{caller.lineno})")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, recording)
    engine = Engine(model, max_batch=2).start()
    try:
        sinks = [Collect(), Collect()]
        futures = [engine.submit(GenerationRequest(p, 2.5, seed=s), sink=sink)
                   for p, s, sink in (("rain", 1, sinks[0]), ("a dog barking twice", 2, sinks[1]))]
        results = [f.result(timeout=120) for f in futures]
    finally:
        engine.stop()
    assert all(r.audio.shape[-1] > 0 for r in results) and all(s.chunks for s in sinks)
    assert calls == [], sorted(set(calls))

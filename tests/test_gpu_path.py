"""The CUDA-only parts of the engine, shown on the CPU with recording stand-ins for torch.cuda: the
codec's own stream (item 4 of issue 24), explicit devices for graph capture and the KV cache sized
from the device's free memory (item 6)."""

from __future__ import annotations

import contextlib
import threading

import pytest
import torch

from soundry.engine import Engine, GenerationRequest
from soundry.engine.codec_stream import CodecStream
from soundry.engine.memory import KVCacheTooLarge, fit_slots, kv_bytes_per_slot
from tests.helpers_cuda_standins import cuda_graph_stand_ins
from tests.helpers_models import tiny_model


class _Events(list):
    """What the stand-ins saw, in order."""


def _cuda_stand_ins(monkeypatch, events: _Events) -> None:
    class Stream:
        def __init__(self, device=None, name="side"):
            self.device, self.name = device, name

        def wait_event(self, event):
            events.append(("wait", self.name, event.name))

    class Event:
        count = 0

        def __init__(self):
            Event.count += 1
            self.name = f"event{Event.count}"

        def record(self, stream):
            events.append(("record", stream.name, self.name))

    @contextlib.contextmanager
    def stream(s):
        events.append(("enter", s.name))
        yield
        events.append(("exit", s.name))

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream(device, "lm"))
    monkeypatch.setattr(torch.cuda, "stream", stream)


class _Codes:
    def __init__(self, events):
        self.events = events

    def record_stream(self, s):
        self.events.append(("record_stream", s.name))


def test_the_codec_decodes_on_its_own_stream_after_the_lm_made_its_codes(monkeypatch):
    events = _Events()
    _cuda_stand_ins(monkeypatch, events)
    cs = CodecStream(torch.device("cuda", 1))
    assert cs.stream.device == torch.device("cuda", 1)
    ready = cs.handoff(_Codes(events))  # engine thread: after the step that wrote the codes
    assert events == [("record", "lm", ready.name), ("record_stream", "side")]
    assert cs.run(ready, lambda x: events.append(("decode", x)) or 7, "codes") == 7  # codec thread
    assert events[2:] == [("enter", "side"), ("wait", "side", ready.name), ("decode", "codes"), ("exit", "side")]


def test_on_the_cpu_the_codec_stream_is_a_plain_call():
    cs = CodecStream("cpu")
    assert cs.stream is None and cs.handoff(torch.zeros(2)) is None
    assert cs.run(None, lambda a, b: a + b, 2, 3) == 5


def test_the_engine_hands_every_decode_to_the_codec_thread_through_the_codec_stream(monkeypatch):
    seen = []
    real_handoff, real_run = CodecStream.handoff, CodecStream.run

    def handoff(self, *tensors):
        seen.append(("handoff", threading.current_thread().name.split("-")[1].split("_")[0]))
        return real_handoff(self, *tensors)

    def run(self, ready, fn, *args):
        seen.append(("run", threading.current_thread().name.split("-")[1].split("_")[0], fn.__name__))
        return real_run(self, ready, fn, *args)

    monkeypatch.setattr(CodecStream, "handoff", handoff)
    monkeypatch.setattr(CodecStream, "run", run)
    engine = Engine(tiny_model("audiogen"), max_batch=2).start()
    try:
        engine.submit(GenerationRequest("rain", 0.3, seed=1)).result(timeout=120)
    finally:
        engine.stop()
    assert seen == [("handoff", "engine"), ("run", "codec", "_decode")]


def test_graphs_are_captured_on_a_stream_of_the_batchs_device(monkeypatch):
    """The engine thread's current device is not the model's (it never calls torch.cuda.set_device):
    capture must be given a stream made for the batch's device, not torch.cuda.graph's default."""
    from soundry.engine.batch import DecodeBatch
    from soundry.engine.static_steps import StaticSteps

    model = tiny_model("audiogen")
    seen = cuda_graph_stand_ins(monkeypatch)
    batch = DecodeBatch(model.lm, max_slots=2, max_frames=8)
    StaticSteps(batch, buckets=(1, 2), use_graphs=True).prepare()
    assert seen.captured and [g.captured_on for g in seen.captured] == [batch.device] * len(seen.captured)


def test_the_kv_cache_is_sized_from_the_free_gpu_memory(monkeypatch, caplog):
    lm = tiny_model("audiogen").lm
    per_slot = kv_bytes_per_slot(lm, 500)
    free = {"bytes": 100 * per_slot}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 10 * free["bytes"]))
    assert fit_slots(lm, 64, 500, "cpu", 0.5) == 64  # the CPU: as configured
    assert fit_slots(lm, 64, 500, "cuda", 0.9, reserve=0) == 64  # (the reserve: tests/test_gpu_path_ii.py)
    with caplog.at_level("WARNING", logger="soundry.engine.memory"):
        assert fit_slots(lm, 64, 500, "cuda", 0.5, name="audiogen", reserve=0) == 50
    assert "serving 50 requests at a time instead of max_batch=64" in caplog.text
    free["bytes"] = per_slot // 2
    with pytest.raises(KVCacheTooLarge, match=r"the KV cache of one request of audiogen needs .* GiB .*, but cuda "
                                              r"has .* GiB free and kv_cache_memory=0.9 allows"):
        fit_slots(lm, 64, 500, "cuda", 0.9, name="audiogen", reserve=0)


def test_a_kv_cache_that_does_not_fit_fails_requests_with_the_reason(monkeypatch):
    import soundry.engine.scheduler as scheduler

    def too_large(*args, **kwargs):
        raise KVCacheTooLarge("the KV cache of one request of audiogen needs 9.00 GiB")

    monkeypatch.setattr(scheduler, "fit_slots", too_large)
    engine = Engine(tiny_model("audiogen"), max_batch=2)
    fut = engine.submit(GenerationRequest("rain", 0.3))  # queued, then the engine starts
    with pytest.raises(KVCacheTooLarge, match="the KV cache of one request of audiogen needs 9.00 GiB"):
        fut.result(timeout=60)
    with pytest.raises(KVCacheTooLarge, match="needs 9.00 GiB"):  # and so does every later one
        engine.submit(GenerationRequest("rain", 0.3))
    engine.stop()


def test_soundry_test_device_sends_the_tests_model_loads_there(monkeypatch):
    """SOUNDRY_TEST_DEVICE=cuda (tests/device.py): the suite's engine and parity tests run on the GPU,
    in SOUNDRY_TEST_PRECISION (fp32 by default); int8 loads stay on the CPU."""
    import soundry.models.loader as loader
    import tests.device as test_device
    from tests.helpers_models import TINY

    seen = []
    monkeypatch.setattr(loader, "_load_model", lambda name, device, dtype, quantize, precision, *rest:
                        seen.append((device, precision)))
    monkeypatch.setattr(test_device, "TEST_DEVICE", "cuda")
    test_device._redirect_loads()
    loader.load_model(str(TINY["audiogen"]), device="cpu")
    loader.load_model(str(TINY["audiogen"]), device="cpu", precision="bf16")
    loader.load_model(str(TINY["audiogen"]), device="cpu", precision="int8")
    assert seen == [("cuda", "fp32"), ("cuda", "bf16"), ("cpu", "int8")]


def test_graphs_are_captured_at_engine_start_not_in_front_of_the_first_request(monkeypatch):
    from soundry.engine.static_steps import StaticSteps

    prepared = threading.Event()
    real_prepare = StaticSteps.prepare

    def prepare(self):
        prepared.set()
        return real_prepare(self)

    monkeypatch.setattr(StaticSteps, "prepare", prepare)
    engine = Engine(tiny_model("audiogen"), max_batch=2, static_steps=True).start()
    try:
        assert prepared.wait(60)  # no request submitted
    finally:
        engine.stop()

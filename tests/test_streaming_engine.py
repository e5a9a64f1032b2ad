"""Streaming in the engine: the frames a request finishes flow out as audio while it is generated,
close to the final decode (SNR), with bounded per-chunk work; the final result is unchanged."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from soundry.engine import Engine, GenerationRequest
from soundry.engine.streaming import IncrementalDecoder
from soundry.models import load_model
from tests.helpers_models import TINY, tiny_model


class Collect:
    """An always-listening sink that records what it gets."""

    def __init__(self):
        self.chunks: list[np.ndarray] = []
        self.lock = threading.Lock()

    @property
    def wanted(self) -> bool:
        return True

    def push(self, audio: np.ndarray) -> None:
        with self.lock:
            self.chunks.append(audio)

    def audio(self) -> np.ndarray:
        return np.concatenate(self.chunks, axis=-1)


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    noise = np.sum((reference - estimate) ** 2)
    return float(10 * np.log10(np.sum(reference ** 2) / max(noise, 1e-20)))


@pytest.mark.parametrize("kind", ["audiogen", "musicgen"])
def test_incremental_decode_is_close_to_the_whole_decode_and_bounded(kind):
    model = tiny_model(kind)
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, model.codec.cardinality, (model.cfg.n_q, 160), generator=gen)
    whole = model.decode(codes[None])[0].numpy()
    hop = model.sample_rate // int(model.frame_rate)
    assert whole.shape[-1] == 160 * hop
    widths = []
    decoder = IncrementalDecoder(lambda c: widths.append(c.shape[-1]) or model.decode(c), hop, whole.shape[-1],
                                 left=50, hold=5)
    parts = [decoder.push(codes[:, i:i + 20], final=i + 20 >= 160) for i in range(0, 160, 20)]
    streamed = np.concatenate([p for p in parts if p.size], axis=-1)
    assert streamed.shape == whole.shape
    assert max(widths) <= 50 + 20 + 5  # left context + new frames + held-back frames: linear total cost
    quality = snr_db(whole, streamed)
    print(f"{kind}: incremental decode SNR {quality:.1f} dB")
    assert quality > 20


def test_engine_streams_while_generating_and_the_result_is_unchanged():
    model = load_model(str(TINY["audiogen"]), device="cpu")
    model.max_duration, model.extend_stride = 1.0, 0.5  # 2.5 s crosses windows
    engine = Engine(model, max_batch=4).start()
    try:
        sink = Collect()
        req = dict(prompt="wind", duration=2.5, seed=11, top_k=15, top_p=0.0)
        streamed = engine.submit(GenerationRequest(**req), sink=sink)
        plain = engine.submit(GenerationRequest(**req))
        result, reference = streamed.result(timeout=300), plain.result(timeout=300)
    finally:
        engine.stop()
    assert torch.equal(result.tokens, reference.tokens) and torch.equal(result.audio, reference.audio)
    audio = sink.audio()
    final = result.audio.numpy()
    assert audio.shape == final.shape == (1, 40000)
    # one chunk per second of frames (less the held-back frames), the rest when it ends
    assert [c.shape[-1] for c in sink.chunks] == [45 * 320, 50 * 320, 40000 - 95 * 320]
    quality = snr_db(final, audio)
    print(f"engine stream vs final: SNR {quality:.1f} dB over {len(sink.chunks)} chunks")
    assert quality > 20

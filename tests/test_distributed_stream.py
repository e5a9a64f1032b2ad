"""Live audio in distributed mode: with a Redis broker the worker's chunks reach the API through
Redis; with RabbitMQ the stream route answers the stored file once the task is done."""

from __future__ import annotations

import io
import wave

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.test_distributed import cluster, s3_endpoint  # noqa: F401 - the fixtures (a cluster per broker)

pytestmark = [pytest.mark.services, pytest.mark.slow]  # PostgreSQL, Redis and RabbitMQ; a worker process


def test_stream_route_in_distributed_mode(cluster):  # noqa: F811 - the imported fixture
    cluster.start_worker(models="audiogen")
    # 8 s: long enough that the task is still generating when the API's listener (which reads the database every
    # 0.5 s) starts relaying, also on a loaded machine (3 s finished first once in a full run)
    task_id = cluster.submit("distant thunder", model="audiogen", duration=8, seed=2, normalization="none")
    store = cluster.api.services.store
    with cluster.http.stream("GET", f"/v1/ai/audio_generation/{task_id}/stream", timeout=120) as r:
        assert r.status_code == 200
        chunks = r.iter_raw()
        first = next(chunks)
        status_at_first_byte = store.get(task_id).status
        body = first + b"".join(chunks)
        media = r.headers["content-type"]
    result = cluster.wait([task_id])[task_id]
    stored = httpx.get(result["url_download"], timeout=30).content
    if not cluster.broker.startswith("redis"):  # RabbitMQ: no relay, the stored file once COMPLETED
        assert status_at_first_byte == "COMPLETED" and body == stored
        return
    assert status_at_first_byte == "PROCESSING" and media == "audio/wav"
    with wave.open(io.BytesIO(body)) as w:
        assert (w.getframerate(), w.getnframes()) == (16000, 128000)
        streamed = np.frombuffer(w.readframes(128000), "<i2").astype(np.float64)
    final = sf.read(io.BytesIO(stored), dtype="int16")[0].astype(np.float64)
    snr = 10 * np.log10(np.sum(final ** 2) / max(np.sum((final - streamed) ** 2), 1e-9))
    print(f"distributed stream vs stored file: SNR {snr:.1f} dB")
    assert snr > 20

"""GET /v1/ai/audio_generation/{task_id}/stream: WAV while the task runs, the stored file after."""

from __future__ import annotations

import io
import wave

import httpx
import numpy as np
import pytest
import soundfile as sf

from soundry.tasks.models import Task
from tests.conftest import wait_for


@pytest.fixture(scope="module")
def server(module_live_server):
    return module_live_server

def _create(server, headers, duration: float, **configs) -> str:
    body = {"prompt": "crackling fire", "configs": {"model": "audiogen", "duration": duration, "seed": 5,
                                                    "normalization": "none", **configs}}
    return httpx.post(server.url + "/v1/ai/audio_generation", json=body, headers=headers).json()["data"]["task_id"]


def _wait(server, task_id: str, headers) -> dict:
    with httpx.Client(base_url=server.url) as client:
        return wait_for(client, task_id, headers)


def test_live_stream_is_wav_while_processing_and_matches_the_file(server):
    headers = {"Authorization": f"Bearer {server.api_key}"}
    task_id = _create(server, headers, 3.0)
    store = server.services.store
    with httpx.stream("GET", f"{server.url}/v1/ai/audio_generation/{task_id}/stream", headers=headers,
                      timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
        chunks = r.iter_raw()
        first = next(chunks)
        status_at_first_byte = store.get(task_id).status
        body = first + b"".join(chunks)
    assert status_at_first_byte == "PROCESSING"
    with wave.open(io.BytesIO(body)) as w:  # the header states the whole clip
        assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (16000, 1, 48000)
        streamed = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64)
    assert len(streamed) == 48000

    task = _wait(server, task_id, headers)
    final, sr = sf.read(io.BytesIO(httpx.get(task["url_download"]).content), dtype="int16")
    final = final.astype(np.float64)
    snr = 10 * np.log10(np.sum(final ** 2) / max(np.sum((final - streamed) ** 2), 1e-9))
    print(f"stream vs stored file: SNR {snr:.1f} dB")
    assert snr > 20

    # once finished, the stream answers the stored file itself
    again = httpx.get(f"{server.url}/v1/ai/audio_generation/{task_id}/stream", headers=headers)
    assert again.status_code == 200 and again.content == httpx.get(task["url_download"]).content


def test_signed_stream_link_needs_no_header_and_is_checked(server):
    headers = {"Authorization": f"Bearer {server.api_key}"}
    task_id = _create(server, headers, 0.5)
    link = httpx.get(f"{server.url}/v1/ai/audio_generation/{task_id}", headers=headers).json()["data"]["data"][
        "url_stream"]
    assert link and "sig=" in link
    r = httpx.get(link, timeout=120)  # no Authorization header
    assert r.status_code == 200 and r.headers["content-type"].startswith("audio/")
    assert len(sf.read(io.BytesIO(r.content))[0]) == 8000
    forged = link.replace("sig=", "sig=0")
    assert httpx.get(forged).status_code == 403
    other = link.replace(task_id, "f" * 32)
    assert httpx.get(other).status_code == 403  # a signature is for one task
    assert _wait(server, task_id, headers)["url_stream"] is None  # only while it runs


def test_stream_refusals(server):
    headers = {"Authorization": f"Bearer {server.api_key}"}
    base = f"{server.url}/v1/ai/audio_generation"
    assert httpx.get(f"{base}/{'f' * 32}/stream", headers=headers).status_code == 404
    assert httpx.get(f"{base}/{'f' * 32}/stream").status_code == 401
    svc = server.services
    user = svc.accounts.get_user(server.username)
    failed = svc.store.create(Task(user_id=user.id, prompt="x", config={"duration": 1}, model="audiogen",
                                   status="FAILED", error="the model exploded"))
    r = httpx.get(f"{base}/{failed.id}/stream", headers=headers)
    assert r.status_code == 409 and "the model exploded" in r.json()["error_description"]
    svc.accounts.create_user("eve", "eve's password")
    other_key = svc.accounts.create_api_key(svc.accounts.get_user("eve"))
    task_id = _create(server, headers, 0.5)
    r = httpx.get(f"{base}/{task_id}/stream", headers={"Authorization": f"Bearer {other_key}"})
    assert r.status_code == 404


def test_live_audio_is_kept_on_disk_not_in_memory_and_a_late_listener_hears_it_all():
    """A long task's live audio (here 120 s at 16 kHz, 7.7 MB as float32) is not held in the
    process's memory, and a listener that joins after it all was pushed still gets every sample."""
    import asyncio
    import tracemalloc

    from soundry.tasks.live_audio import LiveAudio

    rate, seconds = 16000, 120
    live = LiveAudio()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        channel = live.open("t" * 32, rate, rate * seconds)
        for i in range(seconds):  # one chunk a second, as the engine pushes them
            channel.push(np.full((1, rate), i / seconds, dtype=np.float32))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    print(f"live audio held in memory after {seconds} s pushed: {held / 1e6:.2f} MB (the audio: "
          f"{seconds * rate * 4 / 1e6:.1f} MB)")
    assert held < 1_000_000  # the old channel kept every chunk in a list: 7.7 MB
    live.close("t" * 32)

    async def listen() -> list[np.ndarray]:
        channel.attach()
        return [chunk async for chunk in channel.audio()]

    heard = asyncio.run(listen())
    assert len(heard) == seconds and all(c.shape == (1, rate) for c in heard)
    assert all(np.all(c == np.float32(i / seconds)) for i, c in enumerate(heard))


def test_a_shared_link_is_counted_apart_from_the_owners_own_streams(server):
    """A signed stream link reaches webhook receivers and can be shared: streams opened with it are counted
    against the link, so its holders cannot use up the owner's cap (issue 30: with 8 link streams open the
    owner's own stream was 429), and the link has a cap of its own."""
    headers = {"Authorization": f"Bearer {server.api_key}"}
    from soundry.signing import signed_stream_path

    task_id = _create(server, headers, 0.5)
    _wait(server, task_id, headers)  # finished: each stream answers the stored file (its slot held meanwhile)
    url = server.url + signed_stream_path(server.services.settings.secret, task_id, 600)  # its url_stream
    slots = server.app.state.audio_streams  # (simulated open streams: the counts the route checks)
    owner = server.services.store.get(task_id).user_id
    cap = server.services.settings.max_audio_streams_per_user
    for _ in range(cap):  # as many link streams open as the cap
        slots.reserve(("link", task_id))
    try:
        assert httpx.get(f"{server.url}/v1/ai/audio_generation/{task_id}/stream", headers=headers).status_code == 200
        refused = httpx.get(url)
        assert refused.status_code == 429 and "this link" in refused.json()["error_description"]
    finally:
        for _ in range(cap):
            slots.release(("link", task_id))
    for _ in range(cap):  # the owner's own streams at the cap: the link still plays
        slots.reserve(owner)
    try:
        assert httpx.get(url).status_code == 200
        assert httpx.get(f"{server.url}/v1/ai/audio_generation/{task_id}/stream", headers=headers).status_code == 429
    finally:
        for _ in range(cap):
            slots.release(owner)

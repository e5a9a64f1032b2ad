"""Uploads under load: a decompression bomb is decoded in bounded memory (measured by the server's peak RSS),
the per-user upload cap holds exactly under parallel uploads (SQLite and PostgreSQL), at most
``upload_decode_concurrency`` decodes run at once (the rest wait, then 503 + Retry-After), and the OpenAPI
document says what the route accepts."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.conftest import make_settings
from tests.helpers_models import TINY
from tests.live_server import free_port, start_live_server
from tests.test_crash import _serve
from tests.test_uploads import clip

ROOT = Path(__file__).resolve().parent.parent


def flac_bomb(seconds: int = 119, rate: int = 192000) -> bytes:
    """Stereo silence at 192 kHz: ~85 kB of FLAC that decodes to ~180 MB of float32."""
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", rate, 2, format="FLAC", subtype="PCM_16") as f:
        second = np.zeros((rate, 2), dtype=np.float32)
        for _ in range(seconds):
            f.write(second)
    return buf.getvalue()


def post_all(url: str, key: str, bodies: list[bytes], name: str = "clip.wav") -> list[httpx.Response]:
    """POST every body to /v1/uploads at once (a barrier lines the requests up)."""
    barrier = threading.Barrier(len(bodies))

    def one(data: bytes) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=120) as c:
            barrier.wait()
            return c.post("/v1/uploads", headers={"Authorization": f"Bearer {key}"},
                          files={"file": (name, data, "application/octet-stream")})

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies))


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def _cli(data_dir: Path, *args: str, env: dict) -> str:
    done = subprocess.run([sys.executable, "-m", "soundry.cli.main", "--data-dir", str(data_dir), *args], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's peak RSS from /proc")
@pytest.mark.slow
def test_three_flac_bombs_at_once_raise_peak_memory_by_a_few_mb(tmp_path):
    # three decode slots, so the three bombs are decoded at the same time (the worst case for memory)
    env = {**os.environ, "SOUNDRY_MODEL_PATHS": f"audiogen={TINY['audiogen']},musicgen={TINY['musicgen']}",
           "SOUNDRY_UPLOAD_DECODE_CONCURRENCY": "3"}
    data, port, log = tmp_path / "data", free_port(), tmp_path / "server.log"
    _cli(data, "users", "create", "kim", "--password", "kim's password", env=env)
    key = _cli(data, "users", "token", "kim", env=env)
    server = _serve(data, port, env, log, ready="/readyz")  # until the default model is loaded
    url = f"http://127.0.0.1:{port}"
    try:
        bomb = flac_bomb()
        assert len(bomb) < 200_000
        before = _peak_rss_kib(server.pid)
        answers = post_all(url, key, [bomb] * 3, "bomb.flac")
        after = _peak_rss_kib(server.pid)
        assert [r.status_code for r in answers] == [201] * 3, [r.text for r in answers]
        assert all(r.json()["data"]["duration"] == pytest.approx(119.0) for r in answers)
        rise_mb = (after - before) / 1024
        # ~180 MB of float32 per decoded bomb; the old whole-clip decode rose ~500 MB per upload
        assert rise_mb < 40, f"peak RSS rose {rise_mb:.0f} MB for three 85 kB uploads"
    finally:
        server.terminate()
        server.wait(30)


def noise_at_the_limits(seconds: int = 119, rate: int = 192000) -> bytes:
    """Stereo white noise at 192 kHz as Ogg Vorbis: ~2.2 MB sent, ~64 MB of FLAC kept (noise does not compress;
    silence, which FLAC shrinks to nothing, cannot show what a stored clip costs)."""
    buf, rng = io.BytesIO(), np.random.default_rng(0)
    with sf.SoundFile(buf, "w", rate, 2, format="OGG", subtype="VORBIS") as f:
        for _ in range(seconds):  # libsndfile's Vorbis writer crashes on one huge write
            f.write((0.3 * rng.standard_normal((rate, 2))).astype(np.float32))
    return buf.getvalue()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's peak RSS from /proc")
def test_four_noise_uploads_at_the_limits_hold_no_clip_in_memory(tmp_path):
    """Four uploads at once of 119 s of 192 kHz stereo noise (the longest, fastest, widest clip taken), each ~64 MB
    once kept as FLAC: the clip goes from the decoder to a temporary file and from there to storage 1 MiB at a time,
    so the server's peak RSS rises by far less than one clip (before: each upload read its FLAC whole for
    ``storage.put``)."""
    env = {**os.environ, "SOUNDRY_MODEL_PATHS": f"audiogen={TINY['audiogen']},musicgen={TINY['musicgen']}",
           "SOUNDRY_UPLOAD_DECODE_CONCURRENCY": "4"}
    data, port, log = tmp_path / "data", free_port(), tmp_path / "server.log"
    _cli(data, "users", "create", "kim", "--password", "kim's password", env=env)
    key = _cli(data, "users", "token", "kim", env=env)
    noise = noise_at_the_limits()
    assert len(noise) < 20 * 2**20  # within max_upload_bytes
    server = _serve(data, port, env, log, ready="/readyz")  # until the default model is loaded
    url = f"http://127.0.0.1:{port}"
    try:
        before = _peak_rss_kib(server.pid)
        answers = post_all(url, key, [noise] * 4, "noise.ogg")
        after = _peak_rss_kib(server.pid)
        assert [r.status_code for r in answers] == [201] * 4, [r.text for r in answers]
        assert all(r.json()["data"]["duration"] == pytest.approx(119.0) for r in answers)
        stored = sorted((data / "files" / "uploads").rglob("*.flac"), key=lambda p: p.stat().st_size)
        assert len(stored) == 4 and stored[0].stat().st_size > 50 * 2**20  # noise: the FLAC stays big
        rise_mb = (after - before) / 1024
        assert rise_mb < 40, f"peak RSS rose {rise_mb:.0f} MB for four uploads of ~64 MB of FLAC each"
    finally:
        server.terminate()
        server.wait(30)


def _never_whole(key):
    raise AssertionError(f"{key} was read whole into memory")


def test_the_worker_reads_the_part_of_a_stored_upload_it_needs_without_reading_it_whole(tmp_path):
    """A task continuing 1 s of a long upload: the stored FLAC is opened and only that part is decoded; the file
    is never read into memory whole (``storage.get``)."""
    from soundry.service.accounts import Accounts
    from soundry.storage.local import LocalStorage
    from soundry.tasks.store import TaskStore
    from soundry.tasks.uploads import UploadStore

    storage = LocalStorage(str(tmp_path / "files"))
    store = TaskStore(f"sqlite:///{tmp_path / 'soundry.db'}")
    user = Accounts(store, "s" * 32).create_user("kim", "kim's password")
    wav, rng = io.BytesIO(), np.random.default_rng(2)
    noise = (0.3 * rng.standard_normal((30 * 48000, 2))).astype(np.float32)
    sf.write(wav, noise, 48000, format="WAV", subtype="PCM_16")
    wav.seek(0)
    up = UploadStore(store, storage).create(user.id, "noise.wav", wav, len(wav.getvalue()), 120.0, 50)
    storage.get = _never_whole
    audio, rate = UploadStore(store, storage).read(up.id, user.id, 20.0, 21.0)
    assert rate == 48000 and audio.shape == (2, 48000)
    expected = np.clip(noise[20 * 48000:21 * 48000].T, -1, 32767 / 32768)  # the 16-bit WAV clips
    np.testing.assert_allclose(audio, expected, atol=2 / 32767)
    store.engine.dispose()


def test_an_upload_streams_to_s3_in_parts(tmp_path):
    """On S3 an upload's FLAC goes up as a multipart upload of 8 MiB parts (boto3's ``upload_fileobj``), not as
    one PUT of the file read whole: the object's ETag is a multipart one (``…-N``)."""
    import boto3
    from moto.server import ThreadedMotoServer

    from soundry.service.accounts import Accounts
    from soundry.storage.s3 import S3Storage
    from soundry.tasks.store import TaskStore
    from soundry.tasks.uploads import UploadStore

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        keys = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys).create_bucket(Bucket="clips")
        storage = S3Storage("s3://clips/up", endpoint, keys["aws_access_key_id"], keys["aws_secret_access_key"])
        store = TaskStore(f"sqlite:///{tmp_path / 'soundry.db'}")
        user = Accounts(store, "s" * 32).create_user("kim", "kim's password")
        wav, rng = io.BytesIO(), np.random.default_rng(1)
        sf.write(wav, (0.3 * rng.standard_normal((60 * 48000, 2))).astype(np.float32), 48000, format="WAV",
                 subtype="PCM_16")
        wav.seek(0)
        up = UploadStore(store, storage).create(user.id, "noise.wav", wav, len(wav.getvalue()), 120.0, 50)
        head = storage.client.head_object(Bucket="clips", Key=f"up/{up.file_key}")
        assert head["ContentLength"] > 8 * 2**20 and head["ContentType"] == "audio/flac"
        assert "-" in head["ETag"], head["ETag"]  # completed from parts
        storage.get = _never_whole  # the worker reads the part it needs through a temporary file
        audio, rate = UploadStore(store, storage).read(up.id, user.id, 59.0)
        assert rate == 48000 and audio.shape == (2, 48000)
        store.engine.dispose()
    finally:
        moto.stop()


def test_parallel_uploads_stop_exactly_at_the_per_user_cap(tmp_path, tiny_models, database_url):
    live = start_live_server(make_settings(tmp_path, database_url=database_url, max_uploads_per_user=3,
                                           upload_decode_concurrency=16, requests_per_minute=0))
    try:
        answers = post_all(live.url, live.api_key, [clip(3.0, 48000, channels=2)] * 12)
        codes = sorted(r.status_code for r in answers)
        assert codes == [201] * 3 + [429] * 9, [r.text for r in answers if r.status_code not in (201, 429)]
        assert all(r.json()["errors"] == ["too_many_uploads"] for r in answers if r.status_code == 429)
        assert live.services.uploads.count(1) == 3
        files = list(Path(live.services.settings.storage_url).rglob("*.flac"))
        assert len(files) == 3  # one file per upload (each its own name); a refused upload leaves none
    finally:
        live.stop()


def test_at_most_the_configured_decodes_run_at_once_and_the_rest_get_503(tmp_path, tiny_models, monkeypatch):
    import soundry.tasks.uploads as uploads

    monkeypatch.setattr(uploads.UploadStore, "DECODE_WAIT", 0.5)
    real, lock, release = uploads.decode_to_flac, threading.Lock(), threading.Event()
    running, peak = [0], [0]

    def counted(*args, **kw):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            release.wait(60)  # held until the waiting uploads have been answered
            return real(*args, **kw)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(uploads, "decode_to_flac", counted)
    live = start_live_server(make_settings(tmp_path, upload_decode_concurrency=2, requests_per_minute=0))
    try:
        answered: list[httpx.Response] = []

        def watch():  # let the two decodes finish once the other four were refused
            while len([r for r in answered if r.status_code == 503]) < 4 and not release.is_set():
                release.wait(0.05)
            release.set()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        barrier = threading.Barrier(6)

        def one(_):
            with httpx.Client(base_url=live.url, timeout=120) as c:
                barrier.wait()
                r = c.post("/v1/uploads", headers={"Authorization": f"Bearer {live.api_key}"},
                           files={"file": ("a.wav", clip(), "application/octet-stream")})
                answered.append(r)
                return r

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(one, range(6)))
        release.set()
        assert peak[0] == 2
        assert sorted(r.status_code for r in answers) == [201] * 2 + [503] * 4
        for r in answers:
            if r.status_code == 503:
                assert r.headers["Retry-After"] == "5" and r.json()["errors"] == ["busy"]
                assert "busy decoding" in r.json()["error_description"]
    finally:
        release.set()
        live.stop()


def test_the_upload_schema_says_what_is_accepted_and_refused(client):
    op = client.app.openapi()["paths"]["/v1/uploads"]["post"]
    form = op["requestBody"]["content"]["multipart/form-data"]
    assert form["schema"]["additionalProperties"] is False and form["schema"]["required"] == ["file"]
    assert "audio/flac" in form["encoding"]["file"]["contentType"]
    assert all(fmt in op["description"] for fmt in ("WAV", "FLAC", "Ogg", "MP3"))
    for code in ("400", "401", "413", "422", "429", "503"):
        answer = op["responses"][code]
        assert answer["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorEnvelope")
    assert "fields" in op["responses"]["400"]["description"]
    assert "invalid_audio" in op["responses"]["422"]["description"]
    assert "Retry-After" in op["responses"]["503"]["description"]

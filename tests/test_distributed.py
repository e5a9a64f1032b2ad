"""Distributed mode against real servers: PostgreSQL, Redis or RabbitMQ, and an S3-compatible server
(moto) — one API process and two ``soundry worker`` processes."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import httpx
import pytest
import soundfile as sf

from tests.conftest import make_settings
from tests.databases import postgres_database
from tests.helpers_models import TINY
from tests.live_server import free_port, start_live_server

BROKERS = {"redis": "redis://127.0.0.1:6379/7", "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//"}
S3_KEYS = {"SOUNDRY_S3_ACCESS_KEY_ID": "testing", "SOUNDRY_S3_SECRET_ACCESS_KEY": "testing"}

pytestmark = [pytest.mark.services, pytest.mark.slow]  # PostgreSQL, Redis and RabbitMQ; worker processes


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def _purge(broker: str) -> None:
    """Drop messages a previous run may have left in the queues."""
    from soundry.tasks.distributed import make_celery

    with make_celery(broker).connection_for_write() as conn:
        for queue in ("audiogen_queue", "musicgen_queue"):
            try:
                conn.default_channel.queue_purge(queue)
            except Exception:  # noqa: BLE001 - the queue does not exist yet
                conn.close()
                conn.connect()


class Cluster:
    """An API (in this process, on a real port) plus worker processes, sharing database, broker and S3."""

    def __init__(self, tmp_path: Path, broker: str, database_url: str, s3_endpoint: str):
        self.tmp_path, self.broker = tmp_path, broker
        self.bucket = f"soundry-{os.urandom(4).hex()}"
        boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=self.bucket)
        self.env = {**os.environ, **S3_KEYS, "SOUNDRY_S3_ENDPOINT_URL": s3_endpoint,
                    "SOUNDRY_MODEL_PATHS": f"audiogen={TINY['audiogen']},musicgen={TINY['musicgen']}",
                    "SOUNDRY_LEASE_SECONDS": "4", "SOUNDRY_RECONCILE_INTERVAL": "1",
                    "SOUNDRY_DATABASE_URL": database_url,
                    "SOUNDRY_BROKER_URL": broker, "SOUNDRY_STORAGE_URL": f"s3://{self.bucket}/audio"}
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("SOUNDRY_")})
        _purge(broker)
        self.data_dir = tmp_path / "data"
        self.api = start_live_server(make_settings(tmp_path))
        self.workers: list[subprocess.Popen] = []
        self.http = httpx.Client(base_url=self.api.url, headers={"Authorization": f"Bearer {self.api.api_key}"},
                                 timeout=30)

    def start_worker(self, models: str = "audiogen,musicgen") -> subprocess.Popen:
        log = open(self.tmp_path / f"worker-{len(self.workers)}.log", "w+")  # noqa: SIM115 - closed with the test
        proc = subprocess.Popen([sys.executable, "-m", "soundry.cli.main", "--data-dir", str(self.data_dir),
                                 "worker", "--models", models, "--concurrency", "4", "--loglevel", "INFO"],
                                env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parent.parent)
        proc.log = log
        self.workers.append(proc)
        deadline = time.time() + 120
        while "ready." not in Path(log.name).read_text():
            assert proc.poll() is None, f"worker exited:\n{Path(log.name).read_text()[-3000:]}"
            assert time.time() < deadline, "worker did not become ready"
            time.sleep(0.2)
        return proc

    def submit(self, prompt: str, **configs) -> str:
        r = self.http.post("/v1/ai/audio_generation", json={"prompt": prompt, "configs": configs})
        assert r.status_code == 201, r.text
        return r.json()["data"]["task_id"]

    def result(self, task_id: str) -> dict:
        return self.http.get(f"/v1/ai/audio_generation/{task_id}").json()["data"]["data"]

    def wait(self, task_ids: list[str], timeout: float = 240) -> dict[str, dict]:
        done: dict[str, dict] = {}
        deadline = time.time() + timeout
        while len(done) < len(task_ids):
            assert time.time() < deadline, f"{len(task_ids) - len(done)} tasks did not finish"
            for tid in task_ids:
                if tid not in done and (res := self.result(tid))["status"] in ("COMPLETED", "FAILED", "CANCELED"):
                    done[tid] = res
            time.sleep(0.3)
        return done

    def close(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
            proc.log.close()
        self.http.close()
        self.api.stop()


@pytest.fixture(params=list(BROKERS))
def cluster(request, tmp_path, s3_endpoint, monkeypatch):
    for key in ("SOUNDRY_S3_ENDPOINT_URL", "SOUNDRY_DATABASE_URL", "SOUNDRY_BROKER_URL", "SOUNDRY_STORAGE_URL",
                "SOUNDRY_LEASE_SECONDS", "SOUNDRY_RECONCILE_INTERVAL", "SOUNDRY_MODEL_PATHS", *S3_KEYS):
        monkeypatch.setenv(key, os.environ.get(key, ""))  # restored after the test
    with postgres_database() as db:
        c = Cluster(tmp_path, BROKERS[request.param], db, s3_endpoint)
        try:
            yield c
        finally:
            c.close()


def _stored_keys(cluster: Cluster) -> list[str]:
    return cluster.api.services.storage.keys()


def test_thirty_tasks_over_two_workers_complete_once(cluster):
    workers = [cluster.start_worker(), cluster.start_worker()]
    ids = [cluster.submit(f"sound number {i}", model="audiogen" if i % 2 else "musicgen",
                          duration=0.5 + 0.1 * (i % 4), seed=i) for i in range(30)]
    results = cluster.wait(ids)
    assert all(r["status"] == "COMPLETED" for r in results.values()), [r["error_description"] for r in
                                                                         results.values()]
    store = cluster.api.services.store
    tasks = [store.get(t) for t in ids]
    assert all(t.attempts == 1 for t in tasks)  # each executed exactly once
    assert {t.worker.split(":")[1] for t in tasks} == {str(w.pid) for w in workers}  # both workers took tasks
    assert sorted(_stored_keys(cluster)) == sorted(t.file_key for t in tasks)  # one object per task, in S3
    for tid in ids[:6]:  # download links work without a header and return the audio
        r = httpx.get(results[tid]["url_download"], timeout=30)
        assert r.status_code == 200
        audio, sr = sf.read(io.BytesIO(r.content))
        assert len(audio) == round(results[tid]["config"]["duration"] * sr)


def test_a_killed_worker_task_completes_once_on_the_other(cluster):
    first = cluster.start_worker()
    tid = cluster.submit("a very long rumble", model="audiogen", duration=120, seed=5)
    store = cluster.api.services.store
    deadline = time.time() + 120
    while not ((t := store.get(tid)).status == "PROCESSING" and t.percent >= 5):
        assert time.time() < deadline and t.status in ("PENDING", "PROCESSING"), t.status
        time.sleep(0.1)
    assert f":{first.pid}:" in t.worker
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    second = cluster.start_worker()
    result = cluster.wait([tid])[tid]
    assert result["status"] == "COMPLETED", result["error_description"]
    task = store.get(tid)
    assert f":{second.pid}:" in task.worker and task.attempts == 2
    assert _stored_keys(cluster) == [task.file_key]  # the dead worker left no second file
    audio, sr = sf.read(io.BytesIO(httpx.get(result["url_download"], timeout=30).content))
    assert len(audio) == 120 * sr

"""One data directory, many processes, as an operator runs them: admin commands beside a live server, a
second server on the same data directory, a task whose process keeps dying; leases on both databases."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from soundry.tasks.models import Task
from tests.helpers_models import TINY
from tests.live_server import free_port
from tests.test_crash import ROOT, _cli, _serve

pytestmark = pytest.mark.slow


def _env(**extra) -> dict:
    return {**os.environ, "SOUNDRY_MODEL_PATHS": f"audiogen={TINY['audiogen']},musicgen={TINY['musicgen']}",
            **extra}


class _Site:
    """A data directory with a user (kim) and her API key, and where its server will listen."""

    def __init__(self, tmp_path, env: dict):
        self.env, self.data, self.log = env, tmp_path / "data", tmp_path / "server.log"
        assert _cli(self.data, "users", "create", "kim", "--password", "kim's password", env=env).returncode == 0
        self.key = _cli(self.data, "users", "token", "kim", env=env).stdout.strip()
        self.port = free_port()
        self.api, self.headers = f"http://127.0.0.1:{self.port}/v1", {"Authorization": f"Bearer {self.key}"}

    def serve(self) -> subprocess.Popen:
        return _serve(self.data, self.port, self.env, self.log)

    def create(self, prompt: str, **configs) -> str:
        r = httpx.post(f"{self.api}/ai/audio_generation", headers=self.headers, timeout=30,
                       json={"prompt": prompt, "configs": configs})
        assert r.status_code == 201, r.text
        return r.json()["data"]["task_id"]


def _wait_final(api: str, headers: dict, task_id: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = httpx.get(f"{api}/ai/audio_generation/{task_id}", headers=headers, timeout=30).json()["data"]["data"]
        if info["status"] in ("COMPLETED", "FAILED", "CANCELED"):
            return info
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not finish in {timeout} s")


def _wait_processing(api: str, headers: dict, task_id: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = httpx.get(f"{api}/ai/audio_generation/{task_id}", headers=headers, timeout=30).json()["data"]["data"]
        if info["status"] == "PROCESSING":
            return
        assert info["status"] == "PENDING", info
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} did not start in {timeout} s")


class _Traffic(threading.Thread):
    """A user's requests in a loop (create, result, /metrics, ElevenLabs, profile) while the operator works;
    every answer that is not 2xx is kept."""

    def __init__(self, api: str, key: str):
        super().__init__(daemon=True)
        self.api, self.headers = api, {"Authorization": f"Bearer {key}"}
        self.key, self.failures, self.task_ids, self.sound_generations = key, [], [], 0
        self.stop = threading.Event()

    def run(self) -> None:
        base = self.api.removesuffix("/v1")
        with httpx.Client(timeout=60) as c:
            while not self.stop.is_set():
                answers = []
                r = c.post(f"{self.api}/ai/audio_generation", headers=self.headers,
                           json={"prompt": "rain", "configs": {"duration": 0.3, "seed": 1}})
                answers.append(r)
                if r.status_code == 201:
                    self.task_ids.append(r.json()["data"]["task_id"])
                    answers.append(c.get(f"{self.api}/ai/audio_generation/{self.task_ids[-1]}", headers=self.headers))
                answers.append(c.get(f"{base}/metrics"))
                answers.append(c.get(f"{self.api}/user/me", headers=self.headers))
                answers.append(c.post(f"{self.api}/sound-generation", headers={"xi-api-key": self.key},
                                      json={"text": "a door", "duration_seconds": 0.5}))
                self.sound_generations += answers[-1].status_code == 200  # a task in the history too
                self.failures += [f"{a.request.method} {a.request.url.path}: {a.status_code} {a.text[:300]}"
                                  for a in answers if not 200 <= a.status_code < 300]
                time.sleep(0.1)


def test_admin_commands_beside_a_running_server_break_nothing(tmp_path):
    site = _Site(tmp_path, _env())
    env, data, api, key = site.env, site.data, site.api, site.key
    server = site.serve()
    try:
        traffic = _Traffic(api, key)
        try:
            traffic.start()
            bob_key = None
            for args in (["users", "create", "bob", "--password", "bob's password"], ["users", "token", "bob"],
                         ["users", "list"], ["users", "disable", "bob"], ["users", "enable", "bob"],
                         ["users", "token", "bob"], ["migrate"]):
                done = _cli(data, *args, env=env)
                assert done.returncode == 0, (args, done.stderr)
                if args[:2] == ["users", "token"]:
                    bob_key = done.stdout.strip()
                # SQLite's WAL belongs to the live server: a command that exits must not delete it
                assert (data / "soundry.db-wal").exists(), args
            assert _cli(data, "users", "revoke-key", bob_key, env=env).returncode == 0
            time.sleep(1.0)  # a few more rounds of traffic after the last command
        finally:
            traffic.stop.set()
            traffic.join(120)
        assert traffic.failures == []
        assert len(traffic.task_ids) >= 3
        headers = site.headers
        for tid in traffic.task_ids:  # nothing lost
            assert _wait_final(api, headers, tid)["status"] == "COMPLETED"
        history = httpx.get(f"{api}/user/history", headers=headers, params={"limit": 1}, timeout=30).json()["data"]
        assert history["total"] == len(traffic.task_ids) + traffic.sound_generations  # nothing duplicated
        assert httpx.get(f"{api}/user/me", headers={"Authorization": f"Bearer {bob_key}"},
                         timeout=30).status_code == 401  # the revocation took effect in the live server
        check = subprocess.run([sys.executable, "-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); "
                                "print(c.execute('PRAGMA integrity_check').fetchone()[0])", str(data / "soundry.db")],
                               capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert check.stdout.strip() == "ok"
    finally:
        server.terminate()
        server.wait(30)


def test_a_second_server_on_the_same_data_dir_is_refused_and_steals_nothing(tmp_path):
    site = _Site(tmp_path, _env())
    api, headers = site.api, site.headers
    first = site.serve()
    try:
        task_id = site.create("a long one", duration=20, seed=3)
        _wait_processing(api, headers, task_id)
        second = subprocess.run([sys.executable, "-m", "soundry.cli.main", "--data-dir", str(site.data), "serve",
                                 "--port", str(free_port())], env=site.env, cwd=ROOT, capture_output=True, text=True,
                                timeout=180)
        assert second.returncode != 0
        assert f"in use by soundry serve (pid {first.pid}" in second.stderr, second.stderr[-2000:]
        info = _wait_final(api, headers, task_id)
        assert info["status"] == "COMPLETED", info
        assert first.poll() is None
    finally:
        first.terminate()
        first.wait(30)


def test_a_task_whose_process_keeps_dying_fails_with_the_reason_and_the_service_stays_up(tmp_path):
    """SIGKILLed while running it, three times (as the kernel's OOM killer would): the next start fails the
    task with the reason instead of running it again, and serves the rest."""
    site = _Site(tmp_path, _env(SOUNDRY_LEASE_SECONDS="2", SOUNDRY_MAX_TASK_ATTEMPTS="3"))
    api, headers = site.api, site.headers
    server = site.serve()
    try:
        task_id = site.create("the killer", duration=60, seed=3)
        for _ in range(3):
            _wait_processing(api, headers, task_id)
            server.send_signal(signal.SIGKILL)
            server.wait(30)
            server = site.serve()
        info = _wait_final(api, headers, task_id)
        assert info["status"] == "FAILED", info
        assert "started 3 times" in info["error_description"], info
        assert _wait_final(api, headers, site.create("after", duration=0.5))["status"] == "COMPLETED"
    finally:
        server.terminate()
        server.wait(30)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_leases_decide_who_runs_a_task(tmp_path, kind):
    """A task under a live lease is never re-queued nor claimed by another worker (a second process's start
    included); a lapsed (or missing) lease is; each start counts, and the start after the last allowed one
    fails the task with the reason."""
    from soundry.service.accounts import Accounts
    from soundry.tasks.store import TaskStore
    from tests.databases import database

    with database(kind, tmp_path) as url:
        store = TaskStore(url)
        user = Accounts(store, "s" * 32).create_user("lee", "lee's password")
        task = store.create(Task(user_id=user.id, prompt="x", config={"duration": 1}, model="audiogen"))
        assert store.claim(task.id, "worker-a", lease_seconds=60, max_attempts=2).worker == "worker-a"
        assert store.requeue_lapsed() == 0 and store.runnable_ids() == []
        assert store.claim(task.id, "worker-b", lease_seconds=60, max_attempts=2) is None
        assert store.get(task.id).worker == "worker-a"
        assert store.renew_leases("worker-a", -1) == 1  # worker-a dies: its lease lapses
        assert store.runnable_ids() == [task.id]
        assert store.requeue_lapsed() == 1 and store.get(task.id).status == "PENDING"
        assert store.claim(task.id, "worker-b", lease_seconds=-1, max_attempts=2).attempts == 2
        failed = store.claim(task.id, "worker-c", lease_seconds=60, max_attempts=2)
        assert failed.status == "FAILED" and "started 2 times" in failed.error
        # a clean stop hands its tasks back without counting the start
        other = store.create(Task(user_id=user.id, prompt="y", config={"duration": 1}, model="audiogen"))
        store.claim(other.id, "worker-d", lease_seconds=60)
        assert store.release("worker-d") == 1
        again = store.get(other.id)
        assert (again.status, again.attempts, again.worker) == ("PENDING", 0, "")
        store.engine.dispose()


def test_a_server_starting_beside_another_migrates_nothing(tmp_path):
    """Two ``soundry serve`` on one data directory started together: the first takes the data directory's lock
    before it touches the database, so while its migration runs (here it waits on PostgreSQL's migration lock,
    which the test holds as a long migration would) the second is refused naming it, never reaching the database;
    the first then serves."""
    import psycopg

    from soundry.data_dir_lock import DataDirInUse, DataDirLock
    from soundry.tasks.migrate import _LOCK_ID
    from tests.databases import postgres_database

    waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    with postgres_database() as url, psycopg.connect(url, autocommit=True) as held:
        env, data, port = _env(SOUNDRY_DATABASE_URL=url), tmp_path / "data", free_port()
        held.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        first = subprocess.Popen([sys.executable, "-m", "soundry.cli.main", "--data-dir", str(data), "serve", "--port",
                                  str(port)], env=env, cwd=ROOT, stdout=(tmp_path / "first.log").open("w"),
                                 stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 180  # a start on a busy machine
            while held.execute(waiting).fetchone()[0] < 1:  # the first is migrating
                assert first.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()[-3000:]
                time.sleep(0.1)
            with pytest.raises(DataDirInUse):  # ... and holds the data directory already
                DataDirLock(data).check_free()
            second = subprocess.run([sys.executable, "-m", "soundry.cli.main", "--data-dir", str(data), "serve",
                                     "--port", str(free_port())], env=env, cwd=ROOT, capture_output=True, text=True,
                                    timeout=180)
            assert second.returncode == 2, second.stderr[-2000:]
            assert f"in use by soundry serve (pid {first.pid}" in second.stderr, second.stderr[-2000:]
            assert held.execute(waiting).fetchone()[0] == 1  # the second never queued for a migration
            held.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
            deadline = time.time() + 180
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert first.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()[-3000:]
                time.sleep(0.2)
        finally:
            first.terminate()
            first.wait(30)


def test_the_data_dir_lock_is_released_when_a_stop_fails(tmp_path, tiny_models, monkeypatch):
    """A stop that raises at shutdown (here the engines') does not keep the data directory locked, and the
    stops after it still run."""
    from fastapi.testclient import TestClient

    from soundry.api.app import create_app
    from soundry.data_dir_lock import DataDirInUse, DataDirLock
    from tests.conftest import make_settings

    settings = make_settings(tmp_path)
    app = create_app(settings)
    svc = app.state.services
    real_stop = svc.engines.stop

    def failing_stop():
        real_stop()
        raise RuntimeError("a stop that fails")

    monkeypatch.setattr(svc.engines, "stop", failing_stop)
    with pytest.raises(RuntimeError, match="a stop that fails"), TestClient(app):
        with pytest.raises(DataDirInUse):
            DataDirLock(settings.data_dir).check_free()
    DataDirLock(settings.data_dir).check_free()  # released


def test_a_lease_lost_by_a_live_worker_does_not_count_as_a_crash(tmp_path, tiny_models):
    """A worker whose housekeeping stalls past its lease loses its task to another worker; once it runs again
    it sees the take-over, stops, and gives back its start: with ``max_attempts`` 2, a third worker can still
    take the task over after a second stall (before, the two stalls counted as two crashes and it failed)."""
    from soundry.service.accounts import Accounts
    from soundry.storage import open_storage
    from soundry.tasks.engines import EngineManager
    from soundry.tasks.runner import TaskRunner
    from soundry.tasks.store import TaskStore

    store = TaskStore(f"sqlite:///{tmp_path / 'soundry.db'}")
    storage = open_storage(str(tmp_path / "files"))
    user = Accounts(store, "s" * 32).create_user("lee", "lee's password")
    task = store.create(Task(user_id=user.id, prompt="a long one", model="audiogen", config={
        "duration": 300, "top_k": 15, "top_p": 0.0, "temperature": 1.0, "cfg_coef": 3.0, "seed": 1}))
    a, b, c = (TaskRunner(store, storage, EngineManager(max_batch=4), worker_id=name, lease_seconds=1, max_attempts=2)
               for name in ("a", "b", "c"))  # three workers (each its own engine); housekeeping not started: stalled

    def until(what, check):
        deadline = time.time() + 120
        while not check():
            assert time.time() < deadline, what
            time.sleep(0.05)

    def held_by(worker):
        return lambda: (lambda t: t.status == "PROCESSING" and t.worker == worker)(store.get(task.id))

    runs = {r.worker_id: threading.Thread(target=r.execute, args=(task.id,), daemon=True) for r in (a, b, c)}
    try:
        runs["a"].start()
        until("a runs it", held_by("a"))
        until("a's lease lapses", lambda: task.id in store.runnable_ids())
        runs["b"].start()
        until("b takes it over", held_by("b"))
        a.start()  # a's housekeeping runs again: it sees the take-over and stops
        runs["a"].join(120)
        assert not runs["a"].is_alive()  # canceled its generation
        assert store.get(task.id).attempts == 1  # b's start only
        until("b's lease lapses", lambda: task.id in store.runnable_ids())
        c.start()
        runs["c"].start()
        until("c takes it over", lambda: store.get(task.id).worker == "c" or store.get(task.id).status == "FAILED")
        after = store.get(task.id)
        assert (after.status, after.worker, after.attempts) == ("PROCESSING", "c", 2), after.error
    finally:
        store.cancel(task.id)
        for r in (a, b, c):
            r.start()
        for t in runs.values():
            if t.ident is not None:
                t.join(120)
        for r in (a, b, c):
            r.stop()
            r.engines.stop()


def test_an_admin_command_beside_a_running_server_never_migrates_under_it(tmp_path, capsys):
    """``soundry users``/``migrate`` while a server holds the data directory: a database at the newest revision is
    used as it is; an older one (a newer soundry's command beside an older server) is refused naming both
    revisions and what to do, and left as it was; with the server gone, ``migrate`` brings it up."""
    from soundry.cli.main import main
    from soundry.data_dir_lock import DataDirLock
    from soundry.tasks import migrate
    from soundry.tasks.store import make_engine

    data = tmp_path / "data"
    data.mkdir()
    engine = make_engine(f"sqlite:///{data / 'soundry.db'}")
    migrate.upgrade(engine, "0003")
    server = DataDirLock(data).acquire()  # as `soundry serve` holds it
    try:
        for args in (["users", "list"], ["migrate"]):
            assert main(["--data-dir", str(data), *args]) != 0
            err = capsys.readouterr().err
            assert "revision 0003" in err and migrate.head_revision() in err and "stop that server" in err, err
            assert "in use by soundry serve (pid" in err, err
            assert migrate.current_revision(engine) == "0003"  # nothing migrated under the server
    finally:
        server.release()
    assert main(["--data-dir", str(data), "migrate"]) == 0
    assert migrate.current_revision(engine) == migrate.head_revision()
    server = DataDirLock(data).acquire()
    try:  # at the newest revision, beside the server: the command works
        assert main(["--data-dir", str(data), "users", "create", "dora", "--password", "dora's password"]) == 0
        assert main(["--data-dir", str(data), "users", "list"]) == 0
        assert "dora" in capsys.readouterr().out
    finally:
        server.release()
    DataDirLock(data).check_free()  # no command kept the lock
    engine.dispose()

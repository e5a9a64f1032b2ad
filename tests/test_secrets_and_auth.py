"""Secrets and files, API keys, and throttles that hold under concurrency and across replicas."""

from __future__ import annotations

import hashlib
import hmac
import multiprocessing
import os
import stat
import threading
import time
import uuid

import jwt
import pytest
from fastapi.testclient import TestClient

import soundry.service.accounts as accounts_module
from soundry.api.app import create_app
from soundry.config import Settings
from soundry.service.limits import storage_uri
from soundry.signing import PURPOSES, derive_key, sign
from soundry.tasks.models import ApiKey
from soundry.tasks.store import TaskStore
from tests.conftest import PASSWORD, basic, make_settings, wait_for


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- secrets and files --------------------------------------------------------------------------------
def test_secret_is_private_and_short_secrets_are_refused(tmp_path):
    settings = make_settings(tmp_path)
    secret_file = settings.data_dir / "secret"
    assert _mode(secret_file) == 0o600 and len(settings.secret) >= 32
    assert secret_file.read_text().strip() == settings.secret
    for content in ("", "  \n", "short secret"):
        secret_file.write_text(content)
        with pytest.raises(ValueError, match="at least 32"):
            make_settings(tmp_path)
    with pytest.raises(ValueError, match="at least 32"):
        make_settings(tmp_path, secret="x" * 31)
    assert make_settings(tmp_path, secret="x" * 32).secret == "x" * 32


def _load_secret(data_dir: str, barrier, out) -> None:
    barrier.wait()
    out.put(Settings.load(config_file=os.devnull, data_dir=data_dir).secret)


@pytest.mark.slow
def test_processes_starting_together_agree_on_one_secret(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for round_ in range(4):
        data_dir, n = str(tmp_path / f"data{round_}"), 6
        barrier, out = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_load_secret, args=(data_dir, barrier, out)) for _ in range(n)]
        for p in procs:
            p.start()
        secrets = {out.get(timeout=60) for _ in procs}
        for p in procs:
            p.join(30)
        assert len(secrets) == 1 and open(os.path.join(data_dir, "secret")).read().strip() in secrets
        assert [f for f in os.listdir(data_dir) if f.startswith(".secret-")] == []  # no temporary left behind


def _watch_secret_creation(data_dir: str, out) -> None:
    """In a child process with umask 0 (the worst case): at every audited operation (open, chmod, link,
    remove, …) while the settings load, record the secret file's mode and length if it exists."""
    import sys

    os.umask(0)
    path, seen, inside = os.path.join(data_dir, "secret"), [], [False]

    def hook(event, args):
        if inside[0]:
            return
        inside[0] = True
        try:
            with open(path) as f:
                seen.append((stat.S_IMODE(os.fstat(f.fileno()).st_mode), len(f.read())))
        except FileNotFoundError:
            pass
        finally:
            inside[0] = False

    sys.addaudithook(hook)
    Settings.load(config_file=os.devnull, data_dir=data_dir)
    out.put(seen)


def test_the_secret_is_never_visible_open_or_half_written(tmp_path):
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_watch_secret_creation, args=(str(tmp_path / "data"), out))
    child.start()
    seen = out.get(timeout=60)
    child.join(30)
    assert seen, "the secret file was never observed"
    assert all(mode & 0o077 == 0 for mode, _ in seen), seen  # never readable by group or others
    assert all(length == 64 for _, length in seen), seen  # never empty or partial


def test_data_dir_and_database_are_private(tmp_path):
    old = os.umask(0o022)  # an ordinary umask: files would be 0644, directories 0755
    try:
        settings = make_settings(tmp_path)
        store = TaskStore(settings.database_url)
        accounts_module.Accounts(store, settings.secret).create_user("ann", PASSWORD)  # a write: WAL and SHM exist
        assert _mode(settings.data_dir) == 0o700
        db = settings.data_dir / "soundry.db"
        for path in (db, f"{db}-wal", f"{db}-shm", settings.data_dir / "secret"):
            assert _mode(path) & 0o077 == 0, (path, oct(_mode(path)))
        store.engine.dispose()
        # a data directory left open by an older version is closed at the next start
        os.chmod(settings.data_dir, 0o755)
        os.chmod(db, 0o644)
        TaskStore(make_settings(tmp_path).database_url).engine.dispose()
        assert _mode(settings.data_dir) == 0o700 and _mode(db) == 0o600
    finally:
        os.umask(old)


def test_each_purpose_has_its_own_key(client, user):
    secret = client.app_services.settings.secret
    keys = {derive_key(secret, p) for p in PURPOSES}
    assert len(keys) == len(PURPOSES) and secret.encode() not in keys
    # the raw secret signs nothing any more: a token or a download link made with it is refused
    forged = jwt.encode({"sub": "1", "typ": "access", "exp": 2**40}, secret, algorithm="HS256")
    assert client.get("/v1/user/me", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    raw_sig = hmac.new(secret.encode(), b"f" * 32 + b".wav:9999999999", hashlib.sha256).hexdigest()
    assert raw_sig != sign(secret, "f" * 32, "wav", 9999999999)
    assert client.get(f"/v1/files/{'f' * 32}.wav?expires=9999999999&sig={raw_sig}").status_code == 403


# -- storage errors -----------------------------------------------------------------------------------
def test_storage_errors_reach_users_without_paths(tmp_path, tiny_models, caplog):
    import shutil
    from pathlib import Path

    root = tmp_path / "private-storage-dir"
    with TestClient(create_app(make_settings(tmp_path, storage_url=str(root)))) as c:
        svc = c.app.state.services
        h = {"Authorization": f"Bearer {svc.accounts.create_api_key(svc.accounts.create_user('ann', PASSWORD))}"}
        shutil.rmtree(root)
        Path(root).write_text("not a directory any more")
        r = c.post("/v1/ai/audio_generation", headers=h, json={"prompt": "x", "configs": {"duration": 0.3}})
        result = wait_for(c, r.json()["data"]["task_id"], h)
    assert result["status"] == "FAILED"
    assert result["error_description"].startswith("saving the audio failed: ")
    assert "private-storage-dir" not in result["error_description"] and "/" not in result["error_description"]
    assert "private-storage-dir" in caplog.text  # the operator's log has the details


def test_s3_errors_name_no_bucket():
    from botocore.exceptions import ClientError

    from soundry.storage.s3 import S3Storage

    storage = S3Storage("s3://acme-private-bucket/audio", "http://127.0.0.1:9", "id", "key")
    exc = storage._fail("upload", "1/x.wav", ClientError(
        {"Error": {"Code": "AccessDenied", "Message": "denied on acme-private-bucket"}}, "PutObject"))
    assert exc.reason == "object storage upload failed (AccessDenied)"
    assert "acme-private-bucket" in str(exc)  # for the log


# -- login throttling and bounded argon2 ------------------------------------------------------------
class SlowHasher:
    """Stands in for the argon2 hasher: counts verifications and how many ran at once."""

    def __init__(self, real, seconds: float = 0.3):
        self.real, self.seconds = real, seconds
        self.calls = self.running = self.most = 0
        self.lock = threading.Lock()

    def verify(self, *args):
        with self.lock:
            self.calls += 1
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(self.seconds)
            return self.real.verify(*args)
        finally:
            with self.lock:
                self.running -= 1

    def hash(self, password):
        return self.real.hash(password)


def _concurrent(fn, n: int) -> list:
    results: list = [None] * n
    start = threading.Barrier(n)

    def run(i):
        start.wait()
        results[i] = fn(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_concurrent_wrong_passwords_get_at_most_the_limit_checked(tmp_path, tiny_models, monkeypatch):
    settings = make_settings(tmp_path, login_failures_per_user=5, login_attempts_per_address=1000,
                             password_hash_concurrency=16)
    with TestClient(create_app(settings, start_worker=False)) as c:
        c.app.state.services.accounts.create_user("bob", PASSWORD)
        hasher = SlowHasher(accounts_module._hasher)
        monkeypatch.setattr(accounts_module, "_hasher", hasher)
        codes = _concurrent(lambda i: c.post("/v1/user/login", headers=basic("bob", f"wrong {i}")).status_code, 16)
    assert sorted(codes) == [401] * 5 + [429] * 11
    assert hasher.calls == 5


@pytest.mark.slow
def test_argon2_work_is_bounded(tmp_path, tiny_models, monkeypatch):
    settings = make_settings(tmp_path, login_attempts_per_address=1000, password_hash_concurrency=2)
    with TestClient(create_app(settings, start_worker=False)) as c:
        for i in range(8):
            c.app.state.services.accounts.create_user(f"u{i}", PASSWORD)
        hasher = SlowHasher(accounts_module._hasher)
        monkeypatch.setattr(accounts_module, "_hasher", hasher)
        codes = _concurrent(lambda i: c.post("/v1/user/login", headers=basic(f"u{i}", PASSWORD if i % 2 else
                                                                              "wrong password")).status_code, 8)
        assert sorted(codes) == [200] * 4 + [401] * 4 and hasher.most == 2
        # when every slot stays busy beyond the wait, a login is told to come back (503), not queued forever
        monkeypatch.setattr(accounts_module, "HASH_WAIT", 0.01)
        hasher.seconds = 1.0
        answers = _concurrent(lambda i: c.post("/v1/user/login", headers=basic(f"u{i}", PASSWORD)), 4)
        busy = [r for r in answers if r.status_code == 503]
        assert busy and busy[0].headers["Retry-After"] and busy[0].json()["errors"] == ["unavailable"]


def test_rate_limit_storage_defaults_to_a_redis_broker(tmp_path):
    assert storage_uri(make_settings(tmp_path)) == "memory://"
    assert storage_uri(make_settings(tmp_path, broker_url="redis://127.0.0.1:6379/3")) == "redis://127.0.0.1:6379/3"
    assert storage_uri(make_settings(tmp_path, broker_url="amqp://guest@127.0.0.1//")) == "memory://"
    assert storage_uri(make_settings(tmp_path, rate_limit_storage="redis://h:1/0", broker_url="amqp://x")) == \
        "redis://h:1/0"


@pytest.mark.services
def test_login_limits_hold_across_replicas_through_redis(tmp_path, tiny_models):
    """Two API processes (two apps here) count one user's failed logins together in Redis."""
    settings = make_settings(tmp_path, rate_limit_storage="redis://127.0.0.1:6379/15", login_failures_per_user=3,
                             login_attempts_per_address=0)
    name = f"r{uuid.uuid4().hex[:12]}"  # a fresh key in the shared Redis
    with TestClient(create_app(settings, start_worker=False)) as a, \
            TestClient(create_app(settings, start_worker=False)) as b:
        a.app.state.services.accounts.create_user(name, PASSWORD)
        assert a.post("/v1/user/login", headers=basic(name, "wrong one")).status_code == 401
        assert b.post("/v1/user/login", headers=basic(name, "wrong two")).status_code == 401
        assert a.post("/v1/user/login", headers=basic(name, "wrong three")).status_code == 401
        r = b.post("/v1/user/login", headers=basic(name))  # replica b saw a's failures
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0


# -- API keys and bearer throttling --------------------------------------------------------------------
def test_api_keys_are_stored_as_keyed_digests(client, user):
    svc = client.app_services
    key = svc.accounts.create_api_key(svc.accounts.get_user("alice"))
    with svc.store.session() as s:
        stored = s.query(ApiKey).one().key_hash
    expected = hmac.new(derive_key(svc.settings.secret, "api-key"), key.encode(), hashlib.sha256).hexdigest()
    assert stored == "hmac-sha256$" + expected
    assert client.get("/v1/user/me", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    wrong = key[:-4] + ("aaaa" if not key.endswith("aaaa") else "bbbb")  # right prefix, wrong secret part
    assert client.get("/v1/user/me", headers={"Authorization": f"Bearer {wrong}"}).status_code == 401


def test_an_old_argon2_api_key_works_and_is_rehashed(client, user):
    svc = client.app_services
    alice = svc.accounts.get_user("alice")
    key = "sk-0123456789ab.old-key-from-an-older-version-0123456789"
    with svc.store.session() as s, s.begin():
        s.add(ApiKey(user_id=alice.id, prefix="0123456789ab", key_hash=accounts_module._hasher.hash(key)))
    h = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/user/me", headers={"Authorization": f"Bearer {key}x"}).status_code == 401
    assert client.get("/v1/user/me", headers=h).status_code == 200
    with svc.store.session() as s:
        assert s.query(ApiKey).filter_by(prefix="0123456789ab").one().key_hash.startswith("hmac-sha256$")
    assert client.get("/v1/user/me", headers=h).status_code == 200


def test_failed_bearer_auth_is_throttled_per_address(tmp_path, tiny_models):
    with TestClient(create_app(make_settings(tmp_path, bearer_failures_per_address=3), start_worker=False)) as c:
        svc = c.app.state.services
        key = svc.accounts.create_api_key(svc.accounts.create_user("eve", PASSWORD))
        for bad in ("sk-0000.nope", "not-a-jwt", key + "x"):
            assert c.get("/v1/user/me", headers={"Authorization": f"Bearer {bad}"}).status_code == 401
        r = c.get("/v1/user/me", headers={"Authorization": "Bearer sk-0000.nope"})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0 and r.json()["errors"] == ["rate_limited"]
        # the address is over its budget: nothing is verified from it until the window passes
        assert c.get("/v1/user/me", headers={"Authorization": f"Bearer {key}"}).status_code == 429

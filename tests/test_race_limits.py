"""Limits that hold under concurrency (issue 19): each check and its insert are one atomic step.

Each test fires its requests from many threads released together by a barrier, on SQLite and on
PostgreSQL, and asserts the cap exactly: as many accepted as allowed, not one more.
"""

from __future__ import annotations

import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from fastapi.testclient import TestClient
from sqlalchemy import event, func, select

from soundry.api.app import create_app
from soundry.api.elevenlabs import routes as routes_elevenlabs
from soundry.tasks.models import RefreshToken, utcnow
from tests.conftest import PASSWORD, make_settings

N = 40  # parallel requests per burst


def _burst(n: int, fn) -> list:
    """fn(i) for i in range(n), from n threads that start together."""
    start = threading.Barrier(n)

    def run(i):
        start.wait()
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


@contextmanager
def _service(tmp_path, database_url, **caps):
    """The API without a worker (created tasks stay PENDING, so the counts only grow)."""
    settings = make_settings(tmp_path, database_url=database_url, requests_per_minute=0, **caps)
    with TestClient(create_app(settings, start_worker=False)) as c:
        yield c, c.app.state.services


def _key_headers(svc, name: str) -> dict:
    key = svc.accounts.create_api_key(svc.accounts.create_user(name, PASSWORD))
    return {"Authorization": f"Bearer {key}"}


def _create(client, headers, duration=0.5):
    return client.post("/v1/ai/audio_generation", headers=headers,
                       json={"prompt": "tick", "configs": {"duration": duration}})


def _codes(responses) -> dict:
    out: dict = {}
    for r in responses:
        key = r.status_code if r.status_code < 400 else (r.status_code, r.json()["errors"][0])
        out[key] = out.get(key, 0) + 1
    return out


def test_parallel_creates_hold_the_unfinished_task_cap(tmp_path, tiny_models, database_url):
    with _service(tmp_path, database_url, max_active_tasks_per_user=12) as (c, svc):
        h = _key_headers(svc, "burst")
        responses = _burst(N, lambda _: _create(c, h))
        assert _codes(responses) == {201: 12, (429, "too_many_tasks"): N - 12}
        assert all(int(r.headers["Retry-After"]) > 0 for r in responses if r.status_code == 429)
        assert svc.store.count() == 12


def test_parallel_creates_hold_the_queued_audio_cap(tmp_path, tiny_models, database_url):
    with _service(tmp_path, database_url, max_queued_audio_seconds_per_user=6) as (c, svc):
        h = _key_headers(svc, "burst")
        responses = _burst(N, lambda _: _create(c, h, 0.5))  # 12 x 0.5 s fit in 6 s
        assert _codes(responses) == {201: 12, (429, "too_much_audio_queued"): N - 12}
        assert svc.store.active_load(svc.accounts.get_user("burst").id) == (12, 6.0)


def test_parallel_creates_of_many_users_hold_the_queue_cap(tmp_path, tiny_models, database_url):
    with _service(tmp_path, database_url, max_queue=12) as (c, svc):
        headers = [_key_headers(svc, f"user{i}") for i in range(8)]
        responses = _burst(N, lambda i: _create(c, headers[i % len(headers)]))
        assert _codes(responses) == {201: 12, (503, "queue_full"): N - 12}
        assert svc.store.count("PENDING") == 12


def test_elevenlabs_and_flexstack_creates_share_one_atomic_cap(tmp_path, tiny_models, database_url, monkeypatch):
    """Both wire APIs create through the same step: a mixed burst still stops at the cap."""
    async def no_live_audio(request, task_id, *a, **kw):
        return None

    async def ended(request, task_id, *a, **kw):  # answer at once (409) and leave the task PENDING
        return types.SimpleNamespace(id=task_id, status="CANCELED")

    monkeypatch.setattr(routes_elevenlabs, "first_audio", no_live_audio)
    monkeypatch.setattr(routes_elevenlabs, "task_end", ended)
    with _service(tmp_path, database_url, max_active_tasks_per_user=12) as (c, svc):
        h = _key_headers(svc, "burst")

        def create(i):
            if i % 2:
                return _create(c, h)
            return c.post("/v1/sound-generation", headers=h, json={"text": "tick", "duration_seconds": 0.5})

        responses = _burst(N, create)
        accepted = sum(r.status_code in (201, 409) for r in responses)
        refused = sum(r.status_code == 429 for r in responses)
        assert (accepted, refused) == (12, N - 12)
        assert svc.store.count() == 12


def _live_refresh_tokens(svc, user_id: int) -> int:
    with svc.store.session() as s:
        return int(s.scalar(select(func.count()).select_from(RefreshToken).where(
            RefreshToken.user_id == user_id, RefreshToken.used_at.is_(None), RefreshToken.expires_at > utcnow())))


@contextmanager
def _slow_refresh_token_inserts(engine, seconds: float = 0.3):
    """Hold each new refresh token back a moment before it is written, as a busy server may: the reuses of
    the burst then run while the winner's replacement is on its way."""
    def delay(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("INSERT INTO REFRESH_TOKENS"):
            time.sleep(seconds)

    event.listen(engine, "before_cursor_execute", delay)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", delay)


def test_a_burst_of_reuses_of_one_refresh_token_leaves_no_live_token(tmp_path, tiny_models, database_url):
    with _service(tmp_path, database_url) as (c, svc):
        user = svc.accounts.create_user("reuser", PASSWORD)
        for _ in range(3):  # a few rounds: each is one race between the winner's new token and the reuses
            token = svc.accounts.issue_tokens(user)["refresh_token"]
            with _slow_refresh_token_inserts(svc.store.engine):
                responses = _burst(16, lambda _, t=token: c.post("/v1/user/refresh_token", data={"refresh_token": t}))
            ok = [r for r in responses if r.status_code == 200]
            assert len(ok) == 1 and _codes(responses)[(401, "unauthorized")] == 15  # spent once, reuse seen
            assert _live_refresh_tokens(svc, user.id) == 0  # the winner's new token was revoked too
            issued = ok[0].json()["data"]["refresh_token"]
            assert c.post("/v1/user/refresh_token", data={"refresh_token": issued}).status_code == 401


def test_on_postgresql_the_user_lock_writes_no_row_version(tmp_path):
    """The per-user lock of a create (and of an upload and a refresh: ``TaskStore.lock_user``) is ``SELECT … FOR
    UPDATE`` on PostgreSQL: the user's row keeps its version (``xmin``) through many creates, where an UPDATE
    wrote a new one (a dead tuple, index entries, WAL) per create; the cap still holds (the tests above)."""
    from sqlalchemy import text

    from tests.databases import postgres_database

    with postgres_database() as url, _service(tmp_path, url) as (c, svc):
        headers = _key_headers(svc, "pat")

        def row_version():
            with svc.store.engine.connect() as conn:
                return conn.execute(text("SELECT xmin::text FROM users WHERE username = 'pat'")).scalar_one()

        before = row_version()
        assert _codes(_create(c, headers) for _ in range(5)) == {201: 5}
        assert row_version() == before

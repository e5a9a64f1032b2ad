"""Waiting for tasks' ends is event-driven and bounded (issue 30 item 3): a task this process ends wakes its
waiters at once; tasks ended elsewhere are seen by one batched query per interval whatever the number of
waiters; every wait has a bound (``max_wait_seconds``); 200 waiting Cog clients leave the server answering."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
from fastapi.testclient import TestClient

from soundry.api.app import create_app
from soundry.service.tasks import TaskSpec
from tests.conftest import PASSWORD, make_settings
from tests.live_server import start_live_server

CAPS = {"max_active_tasks_per_user": 1000, "max_queue": 5000, "max_queued_audio_seconds_per_user": 1e6,
        "requests_per_minute": 0}


def _tasks(svc, user, n: int) -> list[str]:
    return [svc.tasks.create(user, TaskSpec(f"wait {i}", configs={"model": "audiogen", "duration": 1})).id
            for i in range(n)]


class _Counting:
    """Counts the store's reads made while waiting."""

    def __init__(self, store):
        self.store, self.gets, self.batches = store, 0, 0
        self._get, self._batch = store.get, store.ended_among

    def __enter__(self):
        def get(*a, **kw):
            self.gets += 1
            return self._get(*a, **kw)

        def batch(*a, **kw):
            self.batches += 1
            return self._batch(*a, **kw)
        self.store.get, self.store.ended_among = get, batch
        return self

    def __exit__(self, *exc):
        self.store.get, self.store.ended_among = self._get, self._batch


def test_200_waiters_cost_one_query_per_interval_not_one_per_waiter(tmp_path, tiny_models):
    with TestClient(create_app(make_settings(tmp_path, wait_poll_seconds=0.25, **CAPS), start_worker=False)) as c:
        svc = c.app.state.services
        user = svc.accounts.create_user("ann", PASSWORD)
        ids = _tasks(svc, user, 200)

        async def wait_all():
            return await asyncio.gather(*(svc.tasks.wait(t, timeout=2.0) for t in ids))

        with _Counting(svc.store) as reads:
            results = asyncio.run(wait_all())
        assert results == [None] * 200  # nobody ran them: each wait ended at its bound
        assert reads.gets == 200  # one look each when it starts (the task may have ended already)
        assert reads.batches <= 2.0 / 0.25 + 2  # then one query for all of them per interval (was 20 per waiter/s)
        assert svc.watch.waiting() == 0


def test_a_task_ended_here_wakes_its_waiters_at_once(tmp_path, tiny_models):
    """With a poll interval of 10 minutes, only the store's own notice can end these waits."""
    with TestClient(create_app(make_settings(tmp_path, wait_poll_seconds=600, **CAPS), start_worker=False)) as c:
        svc = c.app.state.services
        user = svc.accounts.create_user("ann", PASSWORD)
        ids = _tasks(svc, user, 3)

        async def wait_and_cancel():
            waits = [asyncio.ensure_future(svc.tasks.wait(t, timeout=120)) for t in ids]
            await asyncio.sleep(0.2)
            threading.Thread(target=lambda: [svc.tasks.cancel_task(t) for t in ids]).start()
            return await asyncio.gather(*waits)

        ended = asyncio.run(wait_and_cancel())
        assert [t.status for t in ended] == ["CANCELED"] * 3


def test_a_synchronous_cog_create_is_bounded_by_max_wait_seconds(tmp_path, tiny_models):
    with TestClient(create_app(make_settings(tmp_path, max_wait_seconds=1, **CAPS), start_worker=False)) as c:
        svc = c.app.state.services
        key = svc.accounts.create_api_key(svc.accounts.create_user("ann", PASSWORD))
        r = c.post("/predictions", headers={"Authorization": f"Bearer {key}"},
                   json={"input": {"prompt": "a waltz", "duration": 1}})
        assert r.status_code == 503 and "max_wait_seconds" in r.json()["detail"], r.text
        assert r.headers["retry-after"]
        assert svc.store.count("PENDING") == 1  # the task goes on


def test_200_waiting_cog_clients_leave_healthz_and_creates_answering(tmp_path, tiny_models):
    """200 synchronous Cog creates wait (no worker runs them); meanwhile /healthz and a FlexStack create
    answer (the figures: bench/waiters.py); then canceling the tasks ends every wait."""
    server = start_live_server(make_settings(tmp_path, max_wait_seconds=120, **CAPS), start_worker=False)
    try:
        auth = {"Authorization": f"Bearer {server.api_key}"}

        async def scenario():
            limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
            async with httpx.AsyncClient(base_url=server.url, headers=auth, timeout=180, limits=limits) as http:
                waiting = [asyncio.ensure_future(http.post("/predictions", json={
                    "input": {"prompt": f"waltz {i}", "duration": 1}})) for i in range(200)]
                deadline = time.monotonic() + 120
                while server.services.watch.waiting() < 200 and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                assert server.services.watch.waiting() == 200
                health = await http.get("/healthz")
                created = await http.post("/v1/ai/audio_generation", json={"prompt": "rain",
                                                                           "configs": {"duration": 1}})
                assert health.status_code == 200 and created.status_code == 201, created.text
                for task in server.services.store.history(server.services.accounts.get_user(server.username).id,
                                                          500, 0)[0]:
                    server.services.tasks.cancel_task(task.id)
                answers = await asyncio.gather(*waiting)
                assert {r.status_code for r in answers} == {200}
                assert {r.json()["status"] for r in answers} == {"canceled"}

        asyncio.run(scenario())
    finally:
        server.stop()

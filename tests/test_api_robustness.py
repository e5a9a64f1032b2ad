"""Bounded work per request and per connection, against a real uvicorn server with the production
settings (soundry.api.http.server): a stalled broker does not stall other requests, overload is answered
(503 + Retry-After), idle keep-alive connections outlast the client's own expiry, progress streams
are capped, end, and stop when the client leaves, and client addresses pass through trusted proxies
only."""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import make_settings
from tests.live_server import start_live_server

ROOT = Path(__file__).resolve().parent.parent
BODY = {"prompt": "dog barking", "configs": {"duration": 1}}


def _wait(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def server(tmp_path, tiny_models, request):
    """A live server without a worker (tasks stay PENDING); settings from the test's ``server_settings`` mark."""
    mark = request.node.get_closest_marker("server_settings")
    srv = start_live_server(make_settings(tmp_path, worker=False, **(mark.kwargs if mark else {})))
    srv.headers = {"Authorization": f"Bearer {srv.api_key}"}
    yield srv
    srv.stop()


@pytest.fixture
def stalled_enqueue(server):
    """The broker's enqueue blocks until ``release`` is set (a broker that is down or slow)."""
    entered, release = threading.Event(), threading.Event()
    queue = server.services.queue
    original = queue.enqueue

    def slow_enqueue(*args, **kwargs):
        entered.set()
        release.wait(60)
        return original(*args, **kwargs)

    queue.enqueue = slow_enqueue
    results: list[httpx.Response] = []
    creator = threading.Thread(target=lambda: results.append(httpx.post(
        f"{server.url}/v1/ai/audio_generation", json=BODY, headers=server.headers, timeout=90)))
    creator.start()
    try:
        assert entered.wait(30), "the create request never reached enqueue"
        yield results
    finally:
        release.set()
        creator.join(90)
        queue.enqueue = original
    assert results and results[0].status_code == 201, results  # and the stalled create completes


def test_a_stalled_broker_does_not_stall_other_requests(server, stalled_enqueue):
    # while one create waits on the broker, the event loop still serves everyone else
    assert httpx.get(f"{server.url}/healthz", timeout=15).status_code == 200
    r = httpx.get(f"{server.url}/v1/user/me", headers=server.headers, timeout=15)
    assert r.status_code == 200 and r.json()["data"]["username"] == server.username


@pytest.mark.server_settings(max_concurrent_requests=1)
def test_overload_is_answered_with_503_and_retry_after(server, stalled_enqueue):
    r = httpx.get(f"{server.url}/v1/user/me", headers=server.headers, timeout=15)
    assert r.status_code == 503 and r.headers["Retry-After"].isdigit()
    assert r.json()["errors"] == ["overloaded"] and r.json()["status"] == "error"
    assert httpx.get(f"{server.url}/healthz", timeout=15).status_code == 200  # liveness is not capped


def test_an_idle_keep_alive_connection_outlasts_the_clients_expiry(server):
    """httpx expires idle connections after 5 s; a server that closes them at the same moment races
    with the client's next request ("Server disconnected without sending a response")."""
    client_expiry = httpx.AsyncClient()._transport._pool._keepalive_expiry  # 5.0 s by default
    conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=15)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() and conn.sock is not None
        sock = conn.sock
        time.sleep(client_expiry + 1)
        conn.request("GET", "/healthz")  # on the same connection (http.client does not reconnect)
        assert conn.sock is sock
        assert conn.getresponse().status == 200  # today's 5 s keep-alive: RemoteDisconnected
    finally:
        conn.close()


def _open_stream(server, task_id: str, client: httpx.Client):
    """(context, response, lines): an open event stream with its first event read.
    Keep ``lines`` referenced: closing that iterator closes the connection."""
    cm = client.stream("GET", f"{server.url}/v1/ai/audio_generation/{task_id}/events", headers=server.headers)
    response = cm.__enter__()
    assert response.status_code == 200
    lines = response.iter_lines()
    assert next(lines).startswith("event: status")
    return cm, response, lines


def _create(server) -> str:
    r = httpx.post(f"{server.url}/v1/ai/audio_generation", json=BODY, headers=server.headers, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()["data"]["task_id"]


@pytest.mark.server_settings(max_event_streams_per_user=2)
def test_progress_streams_are_capped_per_user_and_released_on_disconnect(server):
    streams = server.app.state.event_streams
    task_id = _create(server)
    with httpx.Client(timeout=30) as a, httpx.Client(timeout=30) as b, httpx.Client(timeout=30) as c:
        first, second = _open_stream(server, task_id, a), _open_stream(server, task_id, b)
        assert streams.open_count() == 2
        refused = c.get(f"{server.url}/v1/ai/audio_generation/{task_id}/events", headers=server.headers)
        assert refused.status_code == 429 and refused.headers["Retry-After"].isdigit()
        assert refused.json()["errors"] == ["too_many_streams"]
        first[0].__exit__(None, None, None)  # the client goes away: its stream stops polling
        a.close()
        _wait(lambda: streams.open_count() == 1, what="the closed stream to be released")
        third = _open_stream(server, task_id, c)  # room again
        assert third[1].status_code == 200
        for cm, _, _ in (second, third):
            cm.__exit__(None, None, None)
    _wait(lambda: streams.open_count() == 0, what="every stream to be released")


@pytest.mark.server_settings(event_stream_seconds=1.0)
def test_a_progress_stream_ends_after_its_lifetime(server):
    task_id = _create(server)  # stays PENDING: no worker
    with httpx.Client(timeout=60) as client:
        with client.stream("GET", f"{server.url}/v1/ai/audio_generation/{task_id}/events",
                           headers=server.headers) as r:
            events = [line for line in r.iter_lines() if line.startswith("event:")]
    assert events[0] == "event: status" and events[-1] == "event: expired"
    _wait(lambda: server.app.state.event_streams.open_count() == 0, what="the stream to be released")


@pytest.mark.server_settings(forwarded_allow_ips="127.0.0.1")
def test_client_addresses_pass_through_a_trusted_proxy_only(server, tmp_path):
    forwarded = {"X-Forwarded-For": "198.51.100.7, 203.0.113.9"}  # a spoofed entry, then the proxy's view
    r = httpx.get(f"{server.url}/healthz", headers=forwarded, timeout=15)
    assert r.json()["host_of_client_call_request"] == "203.0.113.9"  # the right-most untrusted address
    untrusting = start_live_server(make_settings(tmp_path / "other", worker=False, forwarded_allow_ips="10.9.9.9"),
                                   username="dan")
    try:
        r = httpx.get(f"{untrusting.url}/healthz", headers=forwarded, timeout=15)
        assert r.json()["host_of_client_call_request"] == "127.0.0.1"  # not from a trusted proxy: ignored
    finally:
        untrusting.stop()


def test_compose_trusts_exactly_its_proxy():
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    proxy_ip = next(iter(services["proxy"]["networks"].values()))["ipv4_address"]
    env = compose["x-soundry-env"]
    assert env["SOUNDRY_FORWARDED_ALLOW_IPS"] == proxy_ip
    assert "ports" not in services["api"]  # only the proxy reaches the API
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "X-Forwarded-For $remote_addr" in nginx  # the proxy overwrites what clients send


@pytest.mark.server_settings(event_stream_seconds=0.5)
def test_the_python_client_reopens_an_expired_stream(server):
    from soundry.client import Client

    task_id = _create(server)
    timer = threading.Timer(2.5, lambda: httpx.post(f"{server.url}/v1/ai/audio_generation/{task_id}/cancel",
                                                    headers=server.headers, timeout=30))
    timer.start()
    try:
        with Client(server.url, api_key=server.api_key) as client:
            events = list(client.events(task_id, timeout=60))
    finally:
        timer.cancel()
    assert [name for name, _ in events].count("status") >= 2  # one per (re)opened stream, across expiries
    assert events[-1][0] == "done" and events[-1][1]["status"] == "CANCELED"
    assert all(name in ("status", "done") for name, _ in events)


@pytest.mark.server_settings(max_event_streams=1)
def test_progress_streams_are_capped_in_all(server):
    task_id = _create(server)
    with httpx.Client(timeout=30) as a, httpx.Client(timeout=30) as b:
        cm, _, _ = _open_stream(server, task_id, a)
        refused = b.get(f"{server.url}/v1/ai/audio_generation/{task_id}/events", headers=server.headers)
        assert refused.status_code == 503 and refused.headers["Retry-After"].isdigit()
        assert refused.json()["errors"] == ["too_many_streams"]
        cm.__exit__(None, None, None)

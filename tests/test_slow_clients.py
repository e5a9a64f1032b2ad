"""Slow and greedy clients against a real uvicorn server (soundry.api.http.server's settings), over raw
sockets on 127.0.0.1: a request head that stalls is closed after ``header_timeout``, a body that
stalls is answered 408 and closed after ``body_timeout``, stalled unauthenticated requests from
one address cannot take the server's request budget from the others, ``/readyz`` says when the
server is overloaded, and audio streams are capped per task owner and in all."""

from __future__ import annotations

import json
import select
import socket
import time
from contextlib import ExitStack

import httpx
import pytest

from tests.conftest import make_settings
from tests.live_server import start_live_server

BODY = {"prompt": "dog barking", "configs": {"duration": 1}}
GENEROUS = 30.0  # seconds to wait for what must happen (never a timing assertion)


@pytest.fixture
def server(tmp_path, tiny_models, request):
    """A live server without a worker (tasks stay PENDING); settings from the test's ``server_settings`` mark."""
    mark = request.node.get_closest_marker("server_settings")
    srv = start_live_server(make_settings(tmp_path, worker=False, **(mark.kwargs if mark else {})))
    srv.headers = {"Authorization": f"Bearer {srv.api_key}"}
    srv.port = int(srv.url.rsplit(":", 1)[1])
    yield srv
    srv.stop()


def _connect(server, stack: ExitStack) -> socket.socket:
    sock = stack.enter_context(socket.create_connection(("127.0.0.1", server.port), timeout=GENEROUS))
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (socket.timeout if it never does)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _read_response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length (the connection stays open)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
    while len(data) < len(head) + 4 + length:
        data += sock.recv(65536)
    return data


def _stalled_post(server, stack: ExitStack, forwarded_for: str | None = None) -> socket.socket:
    """An unauthenticated request whose body is read before anything else (a refresh token exchange),
    with a complete head and a body that stops after 16 of its 100 bytes."""
    sock = _connect(server, stack)
    xff = f"X-Forwarded-For: {forwarded_for}\r\n" if forwarded_for else ""
    sock.sendall(f"POST /v1/user/refresh_token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n"
                 f"Content-Type: application/x-www-form-urlencoded\r\n{xff}\r\n".encode() + b"refresh_token=ab")
    return sock


def _requests_check(server) -> str:
    """What /readyz says about the requests in progress."""
    return httpx.get(f"{server.url}/readyz", timeout=GENEROUS).json()["data"]["requests"]


def _wait(predicate, what: str) -> None:
    deadline = time.monotonic() + GENEROUS
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.server_settings(header_timeout=1)
def test_a_stalled_request_head_is_closed_after_the_header_timeout(server):
    with ExitStack() as stack:
        half = _connect(server, stack)
        half.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and nothing more
        silent = _connect(server, stack)  # connects and sends nothing at all
        assert _read_until_closed(half) == b""  # closed by the server, without an answer
        assert _read_until_closed(silent) == b""
        # a keep-alive connection that starts its next head and stalls is closed too
        kept = _connect(server, stack)
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert _read_response(kept).startswith(b"HTTP/1.1 200")
        kept.sendall(b"GET /healthz HTTP/1.1\r\n")
        assert _read_until_closed(kept) == b""
    assert httpx.get(f"{server.url}/healthz", timeout=GENEROUS).status_code == 200  # whole heads are served


@pytest.mark.server_settings(body_timeout=1)
def test_a_stalled_body_is_answered_408_and_closed(server):
    with ExitStack() as stack:
        sock = _stalled_post(server, stack)
        answer = _read_until_closed(sock)  # 408, then the server closes the connection
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert b"connection: close" in head.lower()
    envelope = json.loads(body)
    assert envelope["status"] == "error" and envelope["errors"] == ["request_timeout"]
    assert "stalled" in envelope["error_description"]
    whole = httpx.post(f"{server.url}/v1/user/refresh_token", data={"refresh_token": "ab"}, timeout=GENEROUS)
    assert whole.status_code == 401  # a body sent whole is read and answered as before


@pytest.mark.server_settings(body_timeout=5, body_min_rate=10)
def test_a_dripping_body_is_answered_408_once_it_falls_below_the_minimum_rate(server):
    """One byte every 0.5 s never stalls for ``body_timeout`` (5 s), but the body's deadline grows only by 1 s per
    ``body_min_rate`` (10) bytes after its first 5 s (as Apache's mod_reqtimeout MinRate): it is answered 408
    about 6 s in, while the body is still coming (before: held until the last of its 1000 bytes, ~8 minutes)."""
    with ExitStack() as stack:
        sock = _connect(server, stack)
        sock.sendall(b"POST /v1/user/refresh_token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n\r\nrefresh_token=")
        answer = b""
        for _ in range(120):  # up to 60 s of drip, 60 bytes: far past the rate's deadline
            sock.sendall(b"a")
            if select.select([sock], [], [], 0.5)[0]:
                answer = _read_until_closed(sock)
                break
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert b"connection: close" in head.lower()
    envelope = json.loads(body)
    assert envelope["errors"] == ["request_timeout"] and "10 bytes/s" in envelope["error_description"], envelope
    fast = httpx.post(f"{server.url}/v1/user/refresh_token", data={"refresh_token": "ab" * 200}, timeout=GENEROUS)
    assert fast.status_code == 401  # a body sent whole is read and answered as before


@pytest.mark.server_settings(max_concurrent_requests=20, max_unauthenticated_requests_per_address=5,
                             bearer_failures_per_address=3, body_timeout=120, forwarded_allow_ips="127.0.0.1")
def test_ipv6_clients_are_counted_per_64_in_the_per_address_caps(server):
    """An IPv6 client has a /64 to itself (SLAAC, privacy addresses): 30 stalled requests from 30 addresses of one
    /64 count as one address's (5 admitted, 25 answered 429 at once), and so do refused bearer tokens
    (``bearer_failures_per_address``); another /64 is served."""
    net = "2001:db8:1:2::"
    with ExitStack() as stack:
        stalled = [_stalled_post(server, stack, f"{net}{i:x}") for i in range(1, 31)]
        answered: dict[socket.socket, bytes] = {}
        deadline = time.monotonic() + GENEROUS
        while len(answered) < 25 and time.monotonic() < deadline:
            readable, _, _ = select.select([s for s in stalled if s not in answered], [], [], 0.5)
            for sock in readable:
                answered[sock] = sock.recv(65536)
        refused = list(answered.values())
        assert len(refused) == 25 and all(r.startswith(b"HTTP/1.1 429") for r in refused), refused[:1]
        other = {**server.headers, "X-Forwarded-For": "2001:db8:1:3::1"}
        assert httpx.get(f"{server.url}/v1/user/me", headers=other, timeout=GENEROUS).status_code == 200
    codes = [httpx.get(f"{server.url}/v1/user/me", timeout=GENEROUS, headers={
        "Authorization": "Bearer not-a-key", "X-Forwarded-For": f"{net}{i:x}:1"}).status_code for i in range(1, 6)]
    assert codes == [401, 401, 401, 429, 429]
    assert httpx.get(f"{server.url}/v1/user/me", headers=other, timeout=GENEROUS).status_code == 200


@pytest.mark.server_settings(max_concurrent_requests=20, max_unauthenticated_requests_per_address=5,
                             body_timeout=120, forwarded_allow_ips="127.0.0.1")
def test_stalled_unauthenticated_requests_of_one_address_leave_the_others_served(server):
    """30 stalled token exchanges from one address (behind the trusted proxy 127.0.0.1) against a budget of 20
    requests: past its 5, that address is answered 429 at once, and everyone else is still served."""
    attacker, other = "203.0.113.7", "198.51.100.2"
    with ExitStack() as stack:
        stalled = [_stalled_post(server, stack, attacker) for _ in range(30)]
        answered: dict[socket.socket, bytes] = {}
        deadline = time.monotonic() + GENEROUS
        while len(answered) < 25 and time.monotonic() < deadline:  # those over the address's cap: at once
            readable, _, _ = select.select([s for s in stalled if s not in answered], [], [], 0.5)
            for sock in readable:
                answered[sock] = sock.recv(65536)
        refused = list(answered.values())
        assert len(refused) == 25 and all(r.startswith(b"HTTP/1.1 429") for r in refused), refused[:1]
        r = httpx.post(f"{server.url}/v1/user/refresh_token", data={"refresh_token": "ab"}, timeout=GENEROUS,
                       headers={"X-Forwarded-For": attacker})
        assert r.status_code == 429 and r.json()["errors"] == ["rate_limited"] and r.headers["Retry-After"].isdigit()
        assert attacker in r.json()["error_description"]
        for forwarded in (other, None):  # another address, and the proxy's own
            headers = {**server.headers, **({"X-Forwarded-For": forwarded} if forwarded else {})}
            me = httpx.get(f"{server.url}/v1/user/me", headers=headers, timeout=GENEROUS)
            assert me.status_code == 200, me.text
            created = httpx.post(f"{server.url}/v1/ai/audio_generation", json=BODY, headers=headers, timeout=GENEROUS)
            assert created.status_code == 201, created.text
        assert _requests_check(server) == "5 in progress"  # the stalled five; /readyz itself is not counted


@pytest.mark.server_settings(max_concurrent_requests=3, max_unauthenticated_requests_per_address=0, body_timeout=120)
def test_readiness_says_not_ready_while_the_server_is_overloaded(server):
    """(Without a worker the default model never loads, so readiness is 503 anyway here: what is
    checked is that it names the overload, with the envelope of /readyz, not the cap's own answer.)"""
    url = f"{server.url}/readyz"
    assert _requests_check(server) == "0 in progress"
    with ExitStack() as stack:
        for _ in range(3):
            _stalled_post(server, stack)
        _wait(lambda: httpx.post(f"{server.url}/v1/ai/audio_generation", json=BODY, headers=server.headers,
                                 timeout=GENEROUS).status_code == 503, "the server to be overloaded")
        ready = httpx.get(url, timeout=GENEROUS)
        assert ready.status_code == 503 and ready.headers["Retry-After"].isdigit(), ready.text
        assert ready.json()["errors"] == ["not_ready"]
        assert ready.json()["data"]["requests"].startswith("overloaded"), ready.json()
        assert "overloaded" in ready.json()["error_description"]
    _wait(lambda: _requests_check(server) == "0 in progress", "readiness once the stalled requests left")


def _task(server, headers) -> tuple[str, str]:
    """A PENDING task (no worker runs) and its signed stream link."""
    task_id = httpx.post(f"{server.url}/v1/ai/audio_generation", json=BODY, headers=headers,
                         timeout=GENEROUS).json()["data"]["task_id"]
    link = httpx.get(f"{server.url}/v1/ai/audio_generation/{task_id}", headers=headers,
                     timeout=GENEROUS).json()["data"]["data"]["url_stream"]
    return task_id, link


def _open_stream(server, stack: ExitStack, link: str, headers: dict | None = None) -> socket.socket:
    """A GET of the stream that stays open (the task is PENDING, so the answer waits for audio)."""
    sock = _connect(server, stack)
    target = link.split(str(server.port), 1)[1]
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())
    return sock


@pytest.mark.server_settings(max_audio_streams_per_user=2, max_audio_streams=3)
def test_audio_streams_are_capped_per_task_owner_and_in_all(server):
    svc = server.services
    bob = svc.accounts.create_user("bob", "bob's password", email="bob@example.com")
    bob_headers = {"Authorization": f"Bearer {svc.accounts.create_api_key(bob, 'tests')}"}
    task_id, link = _task(server, server.headers)
    bob_task, bob_link = _task(server, bob_headers)

    def open_streams() -> int:
        streams = getattr(server.app.state, "audio_streams", None)
        return streams.open_count() if streams is not None else -1

    with ExitStack() as stack:
        first = _open_stream(server, stack, link)  # the signed link: no header
        _open_stream(server, stack, link)
        _wait(lambda: open_streams() == 2, "two open streams")
        r = httpx.get(link, timeout=GENEROUS)  # the link's cap
        assert r.status_code == 429 and r.json()["errors"] == ["too_many_streams"], r.text
        assert r.headers["Retry-After"].isdigit() and "limit is 2" in r.json()["error_description"]
        # the owner's own streams are counted apart from the shared link's (issue 30 item 4) ...
        _open_stream(server, stack, f"{server.url}/v1/ai/audio_generation/{task_id}/stream", server.headers)
        _wait(lambda: open_streams() == 3, "the owner's own stream")
        r = httpx.get(bob_link, timeout=GENEROUS)  # ... until the server's total is reached
        assert r.status_code == 503 and r.json()["errors"] == ["too_many_streams"], r.text
        first.close()  # a stream that ends gives its place back
        _wait(lambda: open_streams() == 2, "the closed stream's release")
        assert httpx.get(f"{server.url}/v1/ai/audio_generation/{bob_task}", headers=bob_headers,
                         timeout=GENEROUS).status_code == 200

"""Webhooks cannot reach inside (SSRF), and no receiver can hold deliveries.

Traffic goes only to listeners on this machine (127.0.0.1 / ::1). Other addresses appear only in
validation tests, where they are refused before any connection is tried.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient

from soundry.api.app import create_app
from soundry.service.accounts import Accounts
from soundry.tasks import webhook_target
from soundry.tasks.models import Task
from soundry.tasks.store import TaskStore
from soundry.tasks.webhooks import WebhookSender
from tests.conftest import PASSWORD, make_settings

INSIDE_HOSTS = ["127.0.0.1", "localhost", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "0.0.0.0",
                "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]"]
# refused before any connection (never contacted): metadata, private, shared, multicast, IPv6 forms
NEVER_CONTACTED = ["169.254.169.254", "10.0.0.1", "172.16.0.1", "192.168.1.1", "100.64.0.1", "224.0.0.1",
                   "[fc00::1]", "[fd12:3456::1]", "[fe80::1]", "[64:ff9b::a00:1]", "[2002:a00:1::1]"]


class Receiver:
    """Local HTTP listener(s) on 127.0.0.1 (and ::1 when available) that record every request.
    ``gate`` (when given) holds each request open until it is set."""

    def __init__(self, status: int = 200, gate: threading.Event | None = None):
        self.requests: list[tuple[str, dict]] = []
        self.in_flight: dict[str, int] = {}
        self.most_in_flight: dict[str, int] = {}
        lock, rec = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    rec.requests.append((self.path, dict(self.headers)))
                    rec.in_flight[self.path] = rec.in_flight.get(self.path, 0) + 1
                    rec.most_in_flight[self.path] = max(rec.most_in_flight.get(self.path, 0),
                                                        rec.in_flight[self.path])
                if gate is not None:
                    gate.wait(60)
                with lock:
                    rec.in_flight[self.path] -= 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.servers = [ThreadingHTTPServer(("127.0.0.1", 0), Handler)]
        self.port = self.servers[0].server_port
        if socket.has_ipv6:
            class V6(ThreadingHTTPServer):
                address_family = socket.AF_INET6
            try:
                self.servers.append(V6(("::1", self.port), Handler))
            except OSError:
                pass  # no IPv6 loopback here: the v6 URLs are still refused, just not observed
        for server in self.servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


class Trickler:
    """A raw TCP listener that answers one byte at a time: ``head`` first (slowly unless ``fast_head``),
    then ``tail`` forever — until the client goes away (recorded in ``client_left``) or ``stop``."""

    def __init__(self, head: bytes, fast_head: bool = False, interval: float = 0.3):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.stop, self.client_left, self.connections = threading.Event(), threading.Event(), 0
        self.head, self.fast_head, self.interval = head, fast_head, interval
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        data = b"" if self.fast_head else self.head
        try:
            conn.recv(65536)  # the request
            if self.fast_head:
                conn.sendall(self.head)
            deadline = time.monotonic() + 90
            while not self.stop.is_set() and time.monotonic() < deadline:
                conn.sendall(data[:1] or b"x")
                data = data[1:]
                time.sleep(self.interval)
        except OSError:
            self.client_left.set()  # the client closed its end: our next byte had nowhere to go
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def _world(tmp_path, **settings_kw):
    settings = make_settings(tmp_path, webhook_backoff=0.05, **settings_kw)
    store = TaskStore(settings.database_url)
    accounts = Accounts(store, settings.secret)
    users = [accounts.create_user(name, PASSWORD) for name in ("ann", "ben")]
    return settings, store, users


def _task(store: TaskStore, user, url: str) -> str:
    task = store.create(Task(user_id=user.id, prompt="p", config={"duration": 1}, model="audiogen",
                             status="FAILED", error="boom", webhook=url))
    return task.id


def _wait_state(store: TaskStore, task_ids: list[str], states=("delivered", "failed"), timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = {t: store.get(t).webhook_state for t in task_ids}
        if all(s in states for s in got.values()):
            return got
        time.sleep(0.05)
    return {t: store.get(t).webhook_state for t in task_ids}


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.mark.parametrize("host", INSIDE_HOSTS + NEVER_CONTACTED)
def test_create_refuses_webhooks_to_inside_addresses(tmp_path, tiny_models, receiver, host):
    with TestClient(create_app(make_settings(tmp_path), start_worker=False)) as c:
        svc = c.app.state.services
        h = {"Authorization": f"Bearer {svc.accounts.create_api_key(svc.accounts.create_user('ann', PASSWORD))}"}
        url = f"http://{host}:{receiver.port}/hook?token=abc"
        r = c.post("/v1/ai/audio_generation", headers=h, json={"prompt": "x", "webhook": url})
        assert r.status_code == 422, r.text
        assert r.json()["error_description"].startswith("webhook:")  # "… a loopback address …", "not a valid URL"
        assert svc.store.count() == 0
    assert receiver.requests == []


def test_create_accepts_a_public_webhook_and_allowed_networks(tmp_path, tiny_models, monkeypatch):
    # validation only: a stand-in resolver says the name is a public address; no worker runs, nothing is sent
    monkeypatch.setattr(webhook_target, "getaddrinfo",
                        lambda host, port, **kw: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port))])
    settings = make_settings(tmp_path, webhook_allow_cidrs="10.1.0.0/16")
    with TestClient(create_app(settings, start_worker=False)) as c:
        svc = c.app.state.services
        h = {"Authorization": f"Bearer {svc.accounts.create_api_key(svc.accounts.create_user('ann', PASSWORD))}"}
        r = c.post("/v1/ai/audio_generation", headers=h, json={"prompt": "x", "webhook": "https://hooks.example/h"})
        assert r.status_code == 201, r.text
        monkeypatch.setattr(webhook_target, "getaddrinfo", socket.getaddrinfo)
        for url, code in (("http://10.1.2.3/h", 201), ("http://10.2.0.1/h", 422), ("http://[fc00::1]/h", 422)):
            r = c.post("/v1/ai/audio_generation", headers=h, json={"prompt": "x", "webhook": url})
            assert r.status_code == code, (url, r.text)


def test_settings_refuse_a_bad_allow_list(tmp_path):
    with pytest.raises(ValueError, match="webhook_allow_cidrs"):
        make_settings(tmp_path, webhook_allow_cidrs="10.0.0.0/8,not-a-network")


def test_delivery_checks_again_and_nothing_arrives(tmp_path, receiver):
    """Tasks stored with inside URLs (created before this check existed, or a name that now resolves
    inside) are refused at delivery, without retries, and the listener sees nothing."""
    settings, store, (ann, _) = _world(tmp_path)
    hosts = ["127.0.0.1", "localhost", "127.1", "2130706433", "[::1]", "[::ffff:127.0.0.1]"]
    ids = [_task(store, ann, f"http://{host}:{receiver.port}/h") for host in hosts]
    sender = WebhookSender(store, settings)
    try:
        for task_id in ids:
            sender.notify(task_id, "FAILED")
        assert _wait_state(store, ids) == {t: "failed" for t in ids}
    finally:
        sender.stop()
    assert receiver.requests == []


def test_allow_list_reaches_an_intranet_receiver(tmp_path, receiver):
    settings, store, (ann, _) = _world(tmp_path, webhook_allow_cidrs="127.0.0.0/8")
    task_id = _task(store, ann, f"http://127.1:{receiver.port}/h")
    sender = WebhookSender(store, settings)
    try:
        sender.notify(task_id, "FAILED")
        assert _wait_state(store, [task_id]) == {task_id: "delivered"}
    finally:
        sender.stop()
    assert [path for path, _ in receiver.requests] == ["/h"]


def test_delivery_connects_to_the_checked_address_with_one_lookup(tmp_path, receiver, monkeypatch):
    """DNS rebinding: the name is resolved once per attempt and the connection goes to that address;
    the Host header still names the URL's host."""
    lookups = []

    def resolver(host, port, **kw):
        lookups.append(host)
        # first answer 127.0.0.1 (allowed here); any later lookup would answer an address with no listener
        ip = "127.0.0.1" if len(lookups) == 1 else "127.0.0.2"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]

    monkeypatch.setattr(webhook_target, "getaddrinfo", resolver)
    settings, store, (ann, _) = _world(tmp_path, webhook_allow_cidrs="127.0.0.0/8")
    task_id = _task(store, ann, f"http://hooks.example:{receiver.port}/h")
    sender = WebhookSender(store, settings, attempts=1)
    try:
        sender.notify(task_id, "FAILED")
        assert _wait_state(store, [task_id]) == {task_id: "delivered"}
    finally:
        sender.stop()
    assert lookups == ["hooks.example"]
    assert receiver.requests[0][1]["Host"] == f"hooks.example:{receiver.port}"


def test_a_trickling_receiver_cannot_hold_deliveries(tmp_path, receiver):
    trickler = Trickler(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")  # the status line, one byte at a time
    settings, store, (ann, ben) = _world(tmp_path, webhook_allow_cidrs="127.0.0.0/8")
    slow = _task(store, ann, f"http://127.0.0.1:{trickler.port}/slow")
    fast = _task(store, ben, f"http://127.0.0.1:{receiver.port}/fast")
    sender = WebhookSender(store, settings, attempts=1, timeout=2.0)
    try:
        sender.notify(slow, "FAILED")
        while trickler.connections == 0:  # the slow delivery is under way
            time.sleep(0.05)
        sender.notify(fast, "FAILED")
        assert _wait_state(store, [fast], timeout=20) == {fast: "delivered"}  # not stuck behind the trickler
        assert _wait_state(store, [slow], timeout=20) == {slow: "failed"}  # cut off by the attempt's deadline
        assert trickler.client_left.wait(10)
    finally:
        sender.stop()
        trickler.close()


def test_the_response_body_is_not_read(tmp_path):
    trickler = Trickler(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n", fast_head=True, interval=0.1)
    settings, store, (ann, _) = _world(tmp_path, webhook_allow_cidrs="127.0.0.0/8")
    task_id = _task(store, ann, f"http://127.0.0.1:{trickler.port}/h")
    sender = WebhookSender(store, settings, attempts=1, timeout=5.0)
    try:
        sender.notify(task_id, "FAILED")
        assert _wait_state(store, [task_id], timeout=20) == {task_id: "delivered"}
        assert trickler.client_left.wait(10)  # soundry hung up instead of reading 100 MB
    finally:
        sender.stop()
        trickler.close()


def test_deliveries_are_capped_per_user(tmp_path):
    gate = threading.Event()
    receiver = Receiver(gate=gate)
    settings, store, (ann, ben) = _world(tmp_path, webhook_allow_cidrs="127.0.0.0/8", webhook_concurrency=4,
                                         webhook_concurrency_per_user=1)
    ann_ids = [_task(store, ann, f"http://127.0.0.1:{receiver.port}/ann") for _ in range(3)]
    ben_id = _task(store, ben, f"http://127.0.0.1:{receiver.port}/ben")
    sender = WebhookSender(store, settings, attempts=1, timeout=60)
    try:
        for task_id in ann_ids:
            sender.notify(task_id, "FAILED")
        sender.notify(ben_id, "FAILED")
        deadline = time.monotonic() + 20
        while receiver.in_flight.get("/ben", 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver.in_flight.get("/ben") == 1  # ben is not stuck behind ann's held deliveries
        time.sleep(0.5)  # give a second delivery of ann's the chance to start, were it allowed to
        assert receiver.in_flight.get("/ann") == 1
        gate.set()
        assert _wait_state(store, [*ann_ids, ben_id]) == {t: "delivered" for t in [*ann_ids, ben_id]}
        assert receiver.most_in_flight["/ann"] == 1
    finally:
        gate.set()
        sender.stop()
        receiver.close()


def test_webhook_urls_stay_out_of_the_logs(tmp_path, receiver, caplog):
    caplog.set_level(logging.DEBUG)
    settings, store, (ann, _) = _world(tmp_path, webhook_allow_cidrs="127.0.0.0/8")
    ok = _task(store, ann, f"http://127.0.0.1:{receiver.port}/h?token=s3cr3t-ok")
    refused = _task(store, ann, "http://user:s3cr3t-pw@10.0.0.1/h?token=s3cr3t-refused")
    sender = WebhookSender(store, settings, attempts=1)
    try:
        sender.notify(ok, "FAILED")
        sender.notify(refused, "FAILED")
        assert _wait_state(store, [ok, refused]) == {ok: "delivered", refused: "failed"}
    finally:
        sender.stop()
    assert receiver.requests
    assert "s3cr3t" not in caplog.text

"""A real soundry HTTP server (uvicorn in a thread) on a free port, for client, CLI and browser tests."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import uvicorn

from soundry.api.app import create_app
from soundry.api.http.server import uvicorn_config
from soundry.config import Settings
from soundry.tasks.result import listened_url


@dataclass
class LiveServer:
    url: str  # e.g. http://127.0.0.1:54321 (the API lives under url + "/v1")
    username: str
    password: str
    api_key: str
    services: object
    server: uvicorn.Server
    thread: threading.Thread
    app: object = None

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_live_server(settings: Settings, username: str = "carol", password: str = "carol's password",
                      start_worker: bool | None = None) -> LiveServer:
    app = create_app(settings, start_worker=start_worker)
    # the listening socket is bound here, to a port the kernel picks, and handed to uvicorn: no other test can take
    # the port between picking and binding it (free_port's race, with tests running in parallel)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings.listen_url = listened_url("127.0.0.1", port)  # as serve does
    server = uvicorn.Server(uvicorn_config(app, settings, "127.0.0.1", port, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the live server did not start")
        time.sleep(0.05)
    svc = app.state.services
    user = svc.accounts.create_user(username, password, email=f"{username}@example.com")
    key = svc.accounts.create_api_key(user, "tests")
    return LiveServer(f"http://127.0.0.1:{port}", username, password, key, svc, server, thread, app)

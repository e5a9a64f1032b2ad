"""Fixtures: a service on embedded defaults with the tiny reference models."""

from __future__ import annotations

import base64
import os
import time

import pytest
from fastapi.testclient import TestClient

from soundry.api.app import create_app
from soundry.config import Settings
from tests.helpers_models import TINY

PASSWORD = "correct horse battery"

# Compiling the decode step takes minutes of CPU; tests serve eagerly unless they ask for it
# (tests/test_compiled_steps.py). Subprocesses started by tests inherit this.
os.environ.setdefault("SOUNDRY_COMPILE", "false")

# pytest-xdist's workers (pyproject's addopts) share the cores: each worker's torch, and the servers and
# workers it starts (OMP_NUM_THREADS), gets its share of them. Two threads per worker on two cores
# oversubscribe them, and an OpenMP barrier then waits for a thread that is not running: on a busy
# machine a test took 5 times as long as it takes on one thread.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    import torch

    _threads = max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    torch.set_num_threads(_threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))


@pytest.fixture(autouse=True, scope="session")
def quick_password_hashes():
    """argon2id at its lowest cost for the users the tests create and log in (0.3-0.5 s of CPU each at the
    service's cost on this machine, several times per test): what they check is who may log in, not the
    cost of a hash. The service's own cost (soundry.service.accounts) is unchanged, and servers started as
    processes use it."""
    from argon2 import PasswordHasher

    import soundry.service.accounts

    with pytest.MonkeyPatch.context() as mp:
        quick = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
        mp.setattr(soundry.service.accounts, "_hasher", quick)
        yield


@pytest.fixture(autouse=True, scope="session")
def shared_tiny_models():
    """The service's engines in this process (each test's app, live server, worker) load each tiny reference
    model of tests/data once, with the same load options, and share it: a model is read-only to its engines,
    and loading one again took about a second of each test that generates. The loader stays a partial with
    the same keywords (tests/test_packed_weights.py reads them). Models elsewhere, a loader a test passes to
    the EngineManager, and the tests' own load_model calls load as before."""
    import functools
    import threading

    from soundry.models import load_model
    from soundry.models.sources.paths import resolve_model_dir
    from soundry.tasks import engines
    from tests.helpers_models import DATA

    loaded: dict[tuple, object] = {}
    lock = threading.Lock()
    original = engines.EngineManager.__init__

    def load_shared(name: str, **options):
        try:
            where = resolve_model_dir(name, download=False).resolve()
        except Exception:  # noqa: BLE001 - the loader raises what it raises
            return load_model(name, **options)
        if DATA.resolve() not in where.parents:
            return load_model(name, **options)
        key = (name, str(where), tuple(sorted(options.items())))
        with lock:
            if key not in loaded:
                loaded[key] = load_model(name, **options)
            return loaded[key]

    def init(self, *args, **kw):
        original(self, *args, **kw)
        if isinstance(self._loader, functools.partial) and self._loader.func is load_model and not self._loader.args:
            self._loader = functools.partial(load_shared, **self._loader.keywords)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engines.EngineManager, "__init__", init)
        yield


@pytest.fixture
def tiny_models(monkeypatch):
    monkeypatch.setenv("SOUNDRY_MODEL_PATHS", f"audiogen={TINY['audiogen']},musicgen={TINY['musicgen']},"
                                              f"musicgen-stereo={TINY['musicgen-stereo']},"
                                              f"musicgen-melody={TINY['musicgen-melody']},"
                                              f"musicgen-stereo-melody={TINY['musicgen-stereo-melody']}")


def make_settings(tmp_path, **kw) -> Settings:
    return Settings.load(config_file=str(tmp_path / "none.toml"), data_dir=str(tmp_path / "data"), max_batch=8, **kw)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """Every test that uses the service runs against SQLite and against PostgreSQL."""
    from tests.databases import database

    with database(request.param, tmp_path, migrated=True) as url:
        yield url


@pytest.fixture(autouse=True, scope="session")
def dropped_databases():
    """At the end, the PostgreSQL databases the tests made are dropped (by a thread, as they go: see
    tests/databases.py); a drop that failed fails the session."""
    yield
    from tests.databases import finish_drops

    finish_drops()


@pytest.fixture
def settings(tmp_path, tiny_models, database_url):
    return make_settings(tmp_path, database_url=database_url)


@pytest.fixture
def client(settings):
    app = create_app(settings)
    with TestClient(app) as c:
        c.app_services = app.state.services
        yield c


def basic(username: str, password: str = PASSWORD) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


@pytest.fixture
def user(client):
    client.app_services.accounts.create_user("alice", PASSWORD, email="alice@example.com")
    tokens = client.post("/v1/user/login", headers=basic("alice")).json()["data"]
    return {"username": "alice", "headers": {"Authorization": f"Bearer {tokens['access_token']}"}, **tokens}


def wait_for(client, task_id: str, headers: dict, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        data = client.get(f"/v1/ai/audio_generation/{task_id}", headers=headers).json()["data"]["data"]
        if data["status"] in ("COMPLETED", "FAILED", "CANCELED"):
            return data
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} did not finish in {timeout}s")


@pytest.fixture(scope="module")
def module_live_server(tmp_path_factory):
    """One live server (tiny models, SQLite) for a whole test module: each test's own would load the
    models again."""
    from tests.helpers_models import TINY
    from tests.live_server import start_live_server

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOUNDRY_MODEL_PATHS", f"audiogen={TINY['audiogen']},musicgen={TINY['musicgen']}")
        live = start_live_server(make_settings(tmp_path_factory.mktemp("server")))
        yield live
        live.stop()


@pytest.fixture
def live_server(tmp_path, tiny_models):
    """A real HTTP server with the tiny models and a user (``.username``/``.password``/``.api_key``)."""
    from tests.live_server import start_live_server

    server = start_live_server(make_settings(tmp_path, webhook_backoff=0.2))  # SQLite (API suite covers PostgreSQL)
    yield server
    server.stop()


# -- pytest-xdist (pyproject's addopts: -n 2 --dist loadgroup --no-loadscope-reorder) ---------------------
# Modules whose tests must all run on one worker, one after the other, whatever their fixtures: the
# distributed tests share Celery's fixed queues (audiogen_queue, musicgen_queue) on the one Redis and
# RabbitMQ, and each cluster purges them, so two clusters at once would take (and drop) each other's tasks.
SHARED_GROUPS = {"test_distributed.py": "celery-queues", "test_distributed_stream.py": "celery-queues"}


def _xdist_group(item) -> str | None:
    """The worker group of a test: SHARED_GROUPS, else its module's when it uses a fixture wider than a
    test (a module's live server or loaded models, set up once per worker that runs the module's tests),
    else none (it goes alone to whichever worker is free)."""
    module = item.path.name
    if module in SHARED_GROUPS:
        return SHARED_GROUPS[module]
    defs = getattr(item, "_fixtureinfo", None)
    if defs and any(d.scope in ("class", "module", "package") for fds in defs.name2fixturedefs.values() for d in fds):
        return module
    return None


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook turns the marks into the nodeid's "@group"
def pytest_collection_modifyitems(config, items):
    """Group the tests (above) and put the units (a group, or a test alone) that hold a ``slow`` test first,
    each group's tests together and in their order: the longest work starts at once on both workers and the
    short tests fill in after it, so one worker does not end with the slow tests alone."""
    units: dict[str, list] = {}
    for item in items:
        group = _xdist_group(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
        units.setdefault(group or item.nodeid, []).append(item)
    ordered = sorted(units.values(), key=lambda unit: not any(i.get_closest_marker("slow") for i in unit))
    items[:] = [item for unit in ordered for item in unit]

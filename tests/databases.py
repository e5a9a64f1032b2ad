"""Throwaway databases for tests: a SQLite file, or a fresh PostgreSQL database on 127.0.0.1:5432."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import pytest

PG_ADMIN = os.environ.get("SOUNDRY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin():
    import psycopg

    return psycopg.connect(PG_ADMIN, connect_timeout=3, autocommit=True)


def _url(name: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


# DROP DATABASE waits for a checkpoint (0.2-1 s here): the databases of this process are dropped one at a
# time by a thread while the tests go on, and finish_drops() (at the end of the session) waits for them.
_dropper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drop-test-databases")
_drops: list[Future] = []


def _drop(name: str) -> None:
    with _admin() as admin, admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')


def finish_drops() -> None:
    """Drop the migrated templates and wait for every drop; raises the first drop's failure."""
    with _templates_lock:
        if "postgresql" in _templates:
            _drops.append(_dropper.submit(_drop, _templates.pop("postgresql")))
        if "sqlite" in _templates:
            shutil.rmtree(os.path.dirname(_templates.pop("sqlite")), ignore_errors=True)
    while _drops:
        _drops.pop(0).result()


def _create(name: str, template: str | None = None) -> None:
    try:
        admin = _admin()
    except Exception as exc:  # noqa: BLE001 - any connection failure means "no server here"
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN} ({exc}); start it (.ci/run does)")
    with admin, admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))


# One database per process at the newest migration, which the tests' databases copy (CREATE DATABASE ...
# TEMPLATE, a SQLite file copy) instead of running every migration again: the service then starts on a
# database it has migrated before. tests/test_migrations.py and others that ask for an empty one get it.
_templates: dict[str, str] = {}
_templates_lock = threading.Lock()


def _migrated_template(kind: str) -> str:
    from soundry.tasks.store import TaskStore

    with _templates_lock:
        if kind not in _templates:
            if kind == "postgresql":
                name = f"soundry_test_template_{uuid.uuid4().hex[:12]}"
                _create(name)
                TaskStore(_url(name)).engine.dispose()
            else:
                name = os.path.join(tempfile.mkdtemp(prefix="soundry-test-template-"), "soundry.db")
                TaskStore(f"sqlite:///{name}").engine.dispose()
                assert not os.path.exists(f"{name}-wal"), "the template's WAL was not checkpointed"
            _templates[kind] = name
        return _templates[kind]


@contextmanager
def postgres_database(migrated: bool = False):
    """Yields the URL of a new PostgreSQL database, dropped afterwards: empty, or (``migrated``) at the
    newest migration."""
    name = f"soundry_test_{uuid.uuid4().hex[:12]}"
    _create(name, _migrated_template("postgresql") if migrated else None)
    try:
        yield _url(name)
    finally:
        _drops.append(_dropper.submit(_drop, name))


@contextmanager
def database(kind: str, tmp_path, migrated: bool = False):
    if kind == "postgresql":
        with postgres_database(migrated) as url:
            yield url
    else:
        path = tmp_path / "soundry.db"
        if migrated:
            shutil.copy2(_migrated_template("sqlite"), path)  # with its mode: readable by its owner only
        yield f"sqlite:///{path}"

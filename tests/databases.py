"""Throwaway databases for tests: a SQLite file, or a fresh PostgreSQL database on 127.0.0.1:5432."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager

import pytest

PG_ADMIN = os.environ.get("SOUNDRY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin():
    import psycopg

    return psycopg.connect(PG_ADMIN, connect_timeout=3, autocommit=True)


@contextmanager
def postgres_database():
    """Yields the URL of a new, empty PostgreSQL database, dropped afterwards."""
    try:
        admin = _admin()
    except Exception as exc:  # noqa: BLE001 - any connection failure means "no server here"
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN} ({exc}); start it (.ci/run does)")
    name = f"soundry_test_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


@contextmanager
def database(kind: str, tmp_path):
    if kind == "postgresql":
        with postgres_database() as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path / 'soundry.db'}"

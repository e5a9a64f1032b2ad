"""Alembic migrations: both databases reach the models' schema, and old data survives an upgrade."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from soundry.tasks import migrate
from soundry.tasks.models import Base
from soundry.tasks.store import TaskStore, make_engine
from tests.databases import database


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    with database(request.param, tmp_path) as url:
        yield url


def _schema_diff(engine) -> list:
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    return [d for d in diffs
            if not (isinstance(d, tuple) and d[0] == "remove_table" and d[1].name == "alembic_version")]


def test_upgrade_reaches_the_models_schema(db_url):
    engine = make_engine(db_url)
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    assert _schema_diff(engine) == []
    migrate.upgrade(engine)  # a second start is a no-op
    assert migrate.current_revision(engine) == migrate.head_revision()


def test_data_survives_the_upgrade_from_0001(db_url):
    engine = make_engine(db_url)
    migrate.upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, username, name, email, type, password_hash, credits, active, "
                          "created_at) VALUES (1, 'old', '', '', 'user', 'x', 0, true, '2026-01-01 00:00:00')"))
        conn.execute(text("INSERT INTO tasks (id, user_id, prompt, negative_prompt, config, model, status, percent, "
                          "error, attempts, worker, file_key, file_format, sample_rate, audio_seconds, seed, "
                          "created_at) VALUES (:id, 1, 'rain', '', '{\"duration\": 5}', "
                          "'audiogen', 'COMPLETED', 100, '', 1, 'w', 'k', 'wav', 16000, 5.0, 7, "
                          "'2026-01-01 00:00:00')"), {"id": "a" + "0" * 31})
    store = TaskStore(db_url)  # opening the store upgrades
    assert migrate.current_revision(store.engine) == migrate.head_revision()
    task = store.get("a" + "0" * 31)
    assert task.prompt == "rain" and task.seed == 7 and task.webhook == "" and task.lease_until is None
    with store.session() as s, s.begin():  # seeds are 64-bit now
        s.execute(text("UPDATE tasks SET seed = :s"), {"s": 2**62})
    assert store.get(task.id).seed == 2**62


def test_a_database_made_before_migrations_is_stamped_and_upgraded(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine, "0001")
    with engine.begin() as conn:  # as create_all left it: tables, no alembic_version
        conn.execute(text("DROP TABLE alembic_version"))
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    assert "lease_until" in {c["name"] for c in inspect(engine).get_columns("tasks")}

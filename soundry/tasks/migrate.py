"""Bring a database's schema to the newest Alembic revision (SQLite and PostgreSQL).

Every process that opens the store calls this; on PostgreSQL an advisory lock makes concurrent
starts (API replicas, workers) take turns. A database made by ``create_all`` before migrations
existed is recognised and stamped at revision 0001 first.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_LOCK_ID = 0x50D7D  # arbitrary, constant: soundry's advisory lock


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    cfg = alembic_config()
    with engine.begin() as conn:
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
        cfg.attributes["connection"] = conn
        tables = set(inspect(conn).get_table_names())
        if "tasks" in tables and "alembic_version" not in tables:
            command.stamp(cfg, "0001")  # made by create_all at the first schema
        command.upgrade(cfg, revision)

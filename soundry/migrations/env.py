"""Alembic environment: runs on the connection soundry hands it (see soundry/tasks/migrate.py)."""

from alembic import context

from soundry.tasks.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

"""The owner's rating and feedback text of a task (POST /v1/ai/feedback).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("rating", sa.Float, nullable=True))
        batch.add_column(sa.Column("feedback", sa.Text, nullable=False, server_default=""))
        batch.add_column(sa.Column("rated_at", sa.DateTime, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("rated_at")
        batch.drop_column("feedback")
        batch.drop_column("rating")

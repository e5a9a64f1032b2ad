"""Worker leases, webhooks, 64-bit seeds, and single-use refresh tokens.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.alter_column("seed", type_=sa.BigInteger, existing_type=sa.Integer, existing_nullable=True)
        batch.add_column(sa.Column("lease_until", sa.DateTime, nullable=True))
        batch.add_column(sa.Column("webhook", sa.Text, nullable=False, server_default=""))
        batch.add_column(sa.Column("webhook_state", sa.String(16), nullable=False, server_default=""))
    op.create_table(
        "refresh_tokens",
        sa.Column("jti", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False),
        sa.Column("used_at", sa.DateTime, nullable=True),
    )
    op.create_index("ix_refresh_tokens_user_id", "refresh_tokens", ["user_id"])


def downgrade() -> None:
    op.drop_table("refresh_tokens")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("webhook_state")
        batch.drop_column("webhook")
        batch.drop_column("lease_until")
        batch.alter_column("seed", type_=sa.Integer, existing_type=sa.BigInteger, existing_nullable=True)

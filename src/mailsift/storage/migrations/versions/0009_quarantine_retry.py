"""Quarantine idempotence: the retry key of each entry (indexed), and release claims.

``quarantine.retry_key`` lets the MTA's retry of a message find the copy its
first attempt stored (:func:`mailsift.storage.quarantine.store.retry_key`);
``quarantine_release`` holds a release from its claim until it is recorded,
so that two gateways or two clicks send a message once.

Revision ID: 0009_quarantine_retry
Revises: 0002 (the quarantine table)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_quarantine_retry"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("quarantine", sa.Column("retry_key", sa.Text, nullable=False, server_default=""))
    op.create_index("ix_quarantine_retry_key", "quarantine", ["retry_key"])
    op.create_table(
        "quarantine_release",
        sa.Column("quarantine_id", sa.Text, primary_key=True),
        sa.Column("claimed_by", sa.Text, nullable=False),
        sa.Column("claimed_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("quarantine_release")
    op.drop_index("ix_quarantine_retry_key", table_name="quarantine")
    op.drop_column("quarantine", "retry_key")

"""Quarantined messages kept in the database (``QUARANTINE_STORE = "database"``), in chunks.

Expand-only: a new table, nothing existing changes; the file store ignores it.

Revision ID: 0011_dbquarantine
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_dbquarantine"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quarantine_chunk",
        sa.Column("quarantine_id", sa.Text, primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("quarantine_chunk")

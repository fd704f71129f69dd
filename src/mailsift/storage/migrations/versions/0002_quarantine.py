"""The quarantine index: one row per quarantined message, and its recipients.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quarantine",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("category", sa.Text, nullable=False),
        sa.Column("sender", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("scanner", sa.Text, nullable=False),
        sa.Column("level", sa.Float, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("client", sa.Text, nullable=False),
        sa.Column("queue_id", sa.Text, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("released_at", sa.Float, nullable=True),
        sa.Column("released_by", sa.Text, nullable=True),
        sa.Column("released_to", sa.Text, nullable=True),
    )
    op.create_index("ix_quarantine_created", "quarantine", ["created"])
    op.create_index("ix_quarantine_category", "quarantine", ["category"])
    op.create_table(
        "quarantine_recipient",
        sa.Column("quarantine_id", sa.Text, primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("recipient", sa.Text, nullable=False),
    )
    op.create_index("ix_quarantine_recipient_recipient", "quarantine_recipient", ["recipient"])


def downgrade() -> None:
    op.drop_table("quarantine_recipient")
    op.drop_table("quarantine")

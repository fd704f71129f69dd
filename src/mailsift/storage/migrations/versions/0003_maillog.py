"""The message log (``log_sql``): one row per recipient of each message.

Revision ID: 0003
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "maillog",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("queue_id", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("reply", sa.Text, nullable=False),
        sa.Column("level", sa.Float, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("scanner", sa.Text, nullable=False),
        sa.Column("relay_client", sa.Boolean, nullable=False),
        sa.Column("client_address", sa.Text, nullable=False),
        sa.Column("client_name", sa.Text, nullable=False),
        sa.Column("helo", sa.Text, nullable=False),
        sa.Column("elapsed", sa.Float, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("sender", sa.Text, nullable=False),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("message_id", sa.Text, nullable=False),
        sa.Column("attachments", sa.Text, nullable=False),
        sa.Column("spam_score", sa.Float, nullable=True),
        sa.Column("spam_required", sa.Float, nullable=True),
        sa.Column("quarantine", sa.Text, nullable=False),
        sa.Column("note", sa.Text, nullable=False),
    )
    op.create_index("ix_maillog_time", "maillog", ["time"])
    op.create_index("ix_maillog_recipient", "maillog", ["recipient"])
    op.create_index("ix_maillog_sender", "maillog", ["sender"])


def downgrade() -> None:
    op.drop_table("maillog")

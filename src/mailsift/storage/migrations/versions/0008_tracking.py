"""Message tracking: indexes on the per-message log for searching by Message-ID and queue id.

Revision ID: 0008
Revises: 0001
Depends on: 0003 (the maillog table)
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0001"
branch_labels = None
depends_on = "0003"


def upgrade() -> None:
    op.create_index("ix_maillog_message_id", "maillog", ["message_id"])
    op.create_index("ix_maillog_queue_id", "maillog", ["queue_id"])


def downgrade() -> None:
    op.drop_index("ix_maillog_queue_id", table_name="maillog")
    op.drop_index("ix_maillog_message_id", table_name="maillog")

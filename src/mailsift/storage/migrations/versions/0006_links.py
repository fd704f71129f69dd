"""The actions taken through the digest's one-click links (mailsift.reporting.links), for idempotence.

Revision ID: 0006
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "link_action",
        sa.Column("quarantine_id", sa.Text, primary_key=True),
        sa.Column("recipient", sa.Text, primary_key=True),
        sa.Column("action", sa.Text, primary_key=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("claimed", sa.Float, nullable=False),
        sa.Column("done_at", sa.Float, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("link_action")

"""Poison mail: content-tied tempfails counted per message key (mailsift.core.poison).

Revision ID: 0009_poison
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_poison"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "poison_attempt",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("first_seen", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("sender", sa.Text, nullable=False),
    )
    op.create_index("ix_poison_attempt_last_seen", "poison_attempt", ["last_seen"])


def downgrade() -> None:
    op.drop_index("ix_poison_attempt_last_seen", table_name="poison_attempt")
    op.drop_table("poison_attempt")

"""Per-domain/per-user policies (simscan's simcontrol) and white/black lists (mailsift.storage.policies).

Revision ID: 0004
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_policy",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("settings", sa.Text, nullable=False),
        sa.Column("updated", sa.Float, nullable=False),
    )
    op.create_table(
        "listed",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("list", sa.Text, nullable=False),
        sa.Column("field", sa.Text, nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("expires", sa.Float, nullable=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("comment", sa.Text, nullable=False),
        sa.UniqueConstraint("owner", "list", "field", "value", name="uq_listed_entry"),
    )
    op.create_index("ix_listed_owner", "listed", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_listed_owner", table_name="listed")
    op.drop_table("listed")
    op.drop_table("user_policy")

"""Greylisting: the triplets and the auto-whitelist (smtpd_policy).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "greylist",
        sa.Column("network", sa.Text, primary_key=True),
        sa.Column("sender", sa.Text, primary_key=True),
        sa.Column("recipient", sa.Text, primary_key=True),
        sa.Column("first_seen", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("deferred", sa.Integer, nullable=False),
        sa.Column("passed", sa.Integer, nullable=False),
    )
    op.create_table(
        "auto_whitelist",
        sa.Column("network", sa.Text, primary_key=True),
        sa.Column("first_seen", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("passed", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("auto_whitelist")
    op.drop_table("greylist")

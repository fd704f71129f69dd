"""Statistics counters (mailsift.reporting.counters): sums per five-minute interval, domain, verdict and scanner.

Revision ID: 0007
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stats_counter",
        sa.Column("period_start", sa.Integer, primary_key=True),
        sa.Column("domain", sa.Text, primary_key=True),
        sa.Column("verdict", sa.Text, primary_key=True),
        sa.Column("scanner", sa.Text, primary_key=True),
        sa.Column("messages", sa.Integer, nullable=False),
        sa.Column("recipients", sa.Integer, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("scan_seconds", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("stats_counter")

"""Messages deferred by ``tempfail(hold=...)``: one row per message key (mailsift.scanners.tempfail).

Revision ID: 0015_tempfail
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_tempfail"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tempfail_hold",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("first_seen", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
    )
    op.create_index("ix_tempfail_hold_last_seen", "tempfail_hold", ["last_seen"])


def downgrade() -> None:
    op.drop_index("ix_tempfail_hold_last_seen", table_name="tempfail_hold")
    op.drop_table("tempfail_hold")

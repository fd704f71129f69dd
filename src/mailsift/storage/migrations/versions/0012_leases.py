"""Once per cluster: a lease per job and period, taken by one node (mailsift.storage.leases).

Expand only: a new table, nothing older code uses changes.

Revision ID: 0012_leases
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_leases"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mailsift_leases",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("period", sa.Text, primary_key=True),
        sa.Column("holder", sa.Text, nullable=False),
        sa.Column("taken_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("mailsift_leases")

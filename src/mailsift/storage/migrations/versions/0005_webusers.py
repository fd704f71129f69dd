"""Web quarantine users, their addresses and login throttling (mailsift.web.users).

Revision ID: 0005
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "web_user",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("login", sa.Text, nullable=False, unique=True),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("is_admin", sa.Integer, nullable=False),
        sa.Column("language", sa.Text, nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("session_version", sa.Integer, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
    )
    op.create_table(
        "web_user_address",
        sa.Column("user_id", sa.Integer, primary_key=True),
        sa.Column("address", sa.Text, primary_key=True),
    )
    op.create_index("ix_web_user_address_address", "web_user_address", ["address"])
    op.create_table(
        "web_login_throttle",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("window_start", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("web_login_throttle")
    op.drop_table("web_user_address")
    op.drop_table("web_user")

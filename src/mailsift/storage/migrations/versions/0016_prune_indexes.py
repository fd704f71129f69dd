"""Indexes for the housekeeping that prunes in batches (mailsift.cli.housekeeping): each batch of
``web_login_throttle`` keys (by ``window_start``) and of used release links (``link_action`` by
``action``, ``claimed``) is found through an index instead of a scan of the whole table.

Revision ID: 0016_prune_indexes
Revises: 0006
Depends on: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0016_prune_indexes"
down_revision = "0006"
branch_labels = None
depends_on = "0005"


def upgrade() -> None:
    op.create_index("ix_web_login_throttle_window_start", "web_login_throttle", ["window_start"])
    op.create_index("ix_link_action_action_claimed", "link_action", ["action", "claimed"])


def downgrade() -> None:
    op.drop_index("ix_link_action_action_claimed", table_name="link_action")
    op.drop_index("ix_web_login_throttle_window_start", table_name="web_login_throttle")

"""The node in every record: ``maillog.node`` and ``stats_counter.node`` (in its primary key).

Every node of a cluster writes into one database; a log row and a counter now
say which node took the message (``NODE``, :func:`mailsift.settings.node_name`).

Rows already there get ``''`` (unknown), not this node's name: in a cluster the
first node to start the new release runs this migration for all of them, and
the rows it finds were written by every node; ``''`` says "before nodes were
recorded" instead of giving one node the others' history.  A node one release
older inserts log rows without the column: they get ``''`` too (server default).

``stats_counter``'s primary key gains ``node`` (each node adds to its own rows,
so two nodes never update one row).  SQLite cannot change a primary key in
place: the table is copied into one with the new key.  An older node's counter
upsert names the old key and is refused by the database during a rolling
upgrade: its counts stay in memory (bounded, retried, logged) until it runs this
release; its mail is not affected.

The ``stats_counter`` tables built here (the SQLite copy with the new key, and the
downgrade's table with the old key) spell out 0007's columns again on purpose: a
migration keeps the shape of its own time, frozen, so it neither imports
storage/schema.py (which moves on) nor shares code with another revision.

Revision ID: 0014_node
Revises: 0007 (stats_counter); depends on 0003 (maillog)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_node"
down_revision = "0007"
branch_labels = None
depends_on = "0003"

OLD_KEY = ["period_start", "domain", "verdict", "scanner"]
NEW_KEY = [*OLD_KEY, "node"]


def _primary_key_name() -> str | None:
    return sa.inspect(op.get_bind()).get_pk_constraint("stats_counter").get("name")


def upgrade() -> None:
    op.add_column("maillog", sa.Column("node", sa.Text, nullable=False, server_default=""))
    if op.get_bind().dialect.name == "sqlite":
        # SQLite cannot change a primary key in place: a copy with the new key replaces the table
        # (what Alembic's batch mode does; by hand, as batch mode warns on a changed key).
        op.create_table(
            "stats_counter_0014",
            sa.Column("period_start", sa.Integer, primary_key=True),
            sa.Column("domain", sa.Text, primary_key=True),
            sa.Column("verdict", sa.Text, primary_key=True),
            sa.Column("scanner", sa.Text, primary_key=True),
            sa.Column("node", sa.Text, primary_key=True, server_default=""),
            sa.Column("messages", sa.Integer, nullable=False),
            sa.Column("recipients", sa.Integer, nullable=False),
            sa.Column("bytes", sa.BigInteger, nullable=False),
            sa.Column("scan_seconds", sa.Float, nullable=False),
        )
        columns = ", ".join([*OLD_KEY, "messages", "recipients", "bytes", "scan_seconds"])
        op.execute(f"INSERT INTO stats_counter_0014 ({columns}, node) SELECT {columns}, '' FROM stats_counter")  # noqa: S608 - fixed names
        op.drop_table("stats_counter")
        op.rename_table("stats_counter_0014", "stats_counter")
        return
    op.add_column("stats_counter", sa.Column("node", sa.Text, nullable=False, server_default=""))
    op.drop_constraint(_primary_key_name() or "stats_counter_pkey", "stats_counter", type_="primary")
    op.create_primary_key("stats_counter_pkey", "stats_counter", NEW_KEY)


def downgrade() -> None:
    # Merges each interval's rows of all nodes back into one (the old key).
    op.execute(
        "CREATE TABLE stats_counter_merged AS SELECT period_start, domain, verdict, scanner, "
        "SUM(messages) AS messages, SUM(recipients) AS recipients, SUM(bytes) AS bytes, "
        "SUM(scan_seconds) AS scan_seconds FROM stats_counter GROUP BY period_start, domain, verdict, scanner"
    )
    op.drop_table("stats_counter")
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
    op.execute("INSERT INTO stats_counter SELECT * FROM stats_counter_merged")
    op.drop_table("stats_counter_merged")
    with op.batch_alter_table("maillog") as batch:
        batch.drop_column("node")

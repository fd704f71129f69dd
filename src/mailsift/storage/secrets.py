"""Secrets every node of a cluster reads from the shared database (``mailsift_secrets``).

The first node to need a secret makes it: :func:`shared` inserts its proposal
if no row has the name (:func:`mailsift.storage.sql.claim`, ``INSERT ... ON
CONFLICT DO NOTHING``), then reads the row, so nodes starting together all end
up with the one value that won.  A secret is never changed here (to change it,
delete the row: every session and signed link made with it ends).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.engine import Connection

from mailsift.storage import sql
from mailsift.storage.schema import secret_table


def shared(connection: Connection, name: str, proposed: str, now: float) -> str:
    """The secret ``name``: the stored one, or ``proposed`` stored now if there was none."""
    sql.claim(connection, secret_table, {"name": name, "value": proposed, "created": now})
    value = connection.execute(select(secret_table.c.value).where(secret_table.c.name == name)).scalar_one()
    return str(value)

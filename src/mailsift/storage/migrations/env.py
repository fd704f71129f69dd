"""Alembic environment: migrations run on the connection :func:`mailsift.storage.migrations.upgrade` passes."""

from __future__ import annotations

from alembic import context

from mailsift.storage.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only `alembic` run by hand without a connection
    raise RuntimeError("run migrations through mailsift.storage.migrations.upgrade(connection)")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()

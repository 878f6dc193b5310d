"""Alembic environment: runs the migrations on the connection the caller passes in
`config.attributes["connection"]` (see `evals.migrations.upgrade`)."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import evals.store  # noqa: F401  (registers the tables on SQLModel.metadata)

config = context.config
target_metadata = SQLModel.metadata


def run_migrations(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: later revisions copy-and-move tables instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("Offline (--sql) migrations are not supported.")
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "evals.migrations runs on a connection passed in config.attributes['connection']; "
        "use evals.migrations.upgrade(engine)."
    )
run_migrations(connection)

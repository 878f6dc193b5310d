"""Run owners and heartbeats; run ids are never reused.

Revision ID: 0002
Revises: 0001
Create Date: 2026-02-01

`run` gets `attempt_id` (random per attempt), `owner_host`, `owner_pid` and `heartbeat_at`, so a
second runner on one experiment leaves a live run alone and takes over only a stale one. On
SQLite the table is rebuilt with AUTOINCREMENT, so the id of a deleted (taken over) run is never
handed out again (elsewhere ids come from sequences, which never reuse one). Rows written
before have no owner: they count as stale.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AutoString = sqlmodel.sql.sqltypes.AutoString


def _recreate() -> str:
    """SQLite sets AUTOINCREMENT only when the table is created: copy and move it there."""
    return "always" if op.get_bind().dialect.name == "sqlite" else "auto"


def upgrade() -> None:
    with op.batch_alter_table("run", recreate=_recreate(),  # type: ignore[arg-type]
                              table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("attempt_id", AutoString(), nullable=True))
        batch.add_column(sa.Column("owner_host", AutoString(), nullable=True))
        batch.add_column(sa.Column("owner_pid", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("run", recreate=_recreate(),  # type: ignore[arg-type]
                              table_kwargs={"sqlite_autoincrement": False}) as batch:
        for column in ("heartbeat_at", "owner_pid", "owner_host", "attempt_id"):
            batch.drop_column(column)

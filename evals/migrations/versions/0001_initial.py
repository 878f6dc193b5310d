"""Initial schema: experiment, run, message, tool_call, usage, grade.

Revision ID: 0001
Revises:
Create Date: 2026-01-01

Datetime columns are `DateTime(timezone=True)`, the DDL of sqlmodel's `UTCDateTime` (what a
`datetime` field maps to), written as a plain SQLAlchemy type so this file does not depend on
sqlmodel internals.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AutoString = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    op.create_table(
        "experiment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", AutoString(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_experiment_name"), "experiment", ["name"], unique=True)

    op.create_table(
        "run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("unit_key", AutoString(), nullable=False),
        sa.Column("organism", AutoString(), nullable=False),
        sa.Column("agent", AutoString(), nullable=False),
        sa.Column("budget", sa.Integer(), nullable=False),
        sa.Column("repeat", sa.Integer(), nullable=False),
        sa.Column("provider", AutoString(), nullable=False),
        sa.Column("provider_is_llm", sa.Boolean(), nullable=False),
        sa.Column("status", AutoString(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("end_reason", AutoString(), nullable=True),
        sa.Column("detail", AutoString(), nullable=True),
        sa.Column("hypothesis", AutoString(), nullable=True),
        sa.Column("transcript_path", AutoString(), nullable=True),
        sa.Column("llm_calls", sa.Integer(), nullable=False),
        sa.Column("interactions_used", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("wall_time_s", sa.Float(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiment.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("experiment_id", "unit_key", name="uq_run_unit"),
    )
    op.create_index(op.f("ix_run_experiment_id"), "run", ["experiment_id"], unique=False)
    op.create_index(op.f("ix_run_organism"), "run", ["organism"], unique=False)

    op.create_table(
        "message",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("role", AutoString(), nullable=False),
        sa.Column("content", AutoString(), nullable=False),
        sa.Column("tool_calls", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_message_run_id"), "message", ["run_id"], unique=False)

    op.create_table(
        "tool_call",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("call_id", AutoString(), nullable=False),
        sa.Column("name", AutoString(), nullable=False),
        sa.Column("arguments", AutoString(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", AutoString(), nullable=True),
        sa.Column("interactions", sa.Integer(), nullable=False),
        sa.Column("latency_s", sa.Float(), nullable=False),
        sa.Column("interactions_left", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_tool_call_run_id"), "tool_call", ["run_id"], unique=False)

    op.create_table(
        "usage",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("model", AutoString(), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("latency_s", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_usage_run_id"), "usage", ["run_id"], unique=False)

    op.create_table(
        "grade",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("grader", AutoString(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("reasoning", AutoString(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_grade_run_id"), "grade", ["run_id"], unique=False)


def downgrade() -> None:
    for table in ("grade", "usage", "tool_call", "message"):
        op.drop_index(op.f(f"ix_{table}_run_id"), table_name=table)
        op.drop_table(table)
    op.drop_index(op.f("ix_run_organism"), table_name="run")
    op.drop_index(op.f("ix_run_experiment_id"), table_name="run")
    op.drop_table("run")
    op.drop_index(op.f("ix_experiment_name"), table_name="experiment")
    op.drop_table("experiment")

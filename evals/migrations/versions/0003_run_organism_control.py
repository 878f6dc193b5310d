"""Whether a run's organism is a control, recorded when the run starts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

`adl eval compare` pools every organism but the controls into "all". It used to look each
organism up in the registry at compare time, and an organism it could not find there (one
defined in an `--organisms` folder not passed to compare) counted as no control: a control
could be pooled into "all" without a word. The run now records it. Rows written before have
NULL: compare looks those up in the registry as before, and says which it could not find.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("run") as batch:
        batch.add_column(sa.Column("organism_is_control", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("run") as batch:
        batch.drop_column("organism_is_control")

"""Alembic migrations of the results store (`evals.store`), run from code.

No alembic.ini is needed: `alembic_config` builds the configuration with `script_location`
set to this package folder and hands the caller's connection to `env.py`, so the migrations
run on any SQLAlchemy engine (a SQLite file, PostgreSQL, ...).

To add a revision after changing the models in `evals/store.py` (then review the file and bump
`evals.store.SCHEMA_VERSION`):

    from alembic import command
    from sqlmodel import create_engine
    from evals.migrations import alembic_config, upgrade
    engine = create_engine("sqlite:///scratch.db"); upgrade(engine)
    with engine.begin() as conn:
        command.revision(alembic_config(conn), "what changed", autogenerate=True, rev_id="0002")
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine

MIGRATIONS_DIR = Path(__file__).resolve().parent


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for this package; `env.py` runs on `connection`."""
    config = Config()
    # "%" is ConfigParser interpolation; escape it for paths that contain one.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database behind `engine` to `revision` (newest by default), in one
    transaction; a database already there is left as it is."""
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Downgrade the database behind `engine` to `revision` ("base" drops every table)."""
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for a database never migrated."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()

"""Alembic environment: runs migrations on the connection the application hands over (or on the engine
``alembic_config(engine)`` carries), or on the URL in alembic.ini when used from the ``alembic``
command line."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool
from sqlalchemy.engine import Connection

config = context.config


def run_on(connection: Connection) -> None:
    # render_as_batch: SQLite cannot ALTER most things in place; batch mode rebuilds the table.
    context.configure(connection=connection, target_metadata=None, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
given_engine = config.attributes.get("engine")
if connection is not None:
    run_on(connection)
elif given_engine is not None:
    with given_engine.connect() as conn:
        run_on(conn)
else:
    engine = engine_from_config(
        config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.", poolclass=pool.NullPool
    )
    with engine.connect() as conn:
        run_on(conn)

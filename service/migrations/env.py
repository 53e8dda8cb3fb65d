"""Alembic environment: runs on the connection handed over by service.db.migrate, or on the URL."""

from alembic import context
from sqlalchemy import create_engine
from sqlmodel import SQLModel

import service.tables  # noqa: F401  (registers every table)

target_metadata = SQLModel.metadata
config = context.config


def run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    from service.settings import get_settings

    url = config.get_main_option("sqlalchemy.url") or get_settings().database_url
    with create_engine(url).begin() as conn:
        run(conn)

"""Alembic environment: migrations run against the URL `service.core.store.migrate` sets."""

from alembic import context
from sqlalchemy import create_engine

from service.core.store import Base

config = context.config


def run() -> None:
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata,
                          render_as_batch=connection.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()

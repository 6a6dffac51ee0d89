"""Alembic environment: the URL comes from k1.settings (or the caller), never a file."""

from alembic import context

from k1.db import (
    Base,
    make_engine,
    models,  # noqa: F401 - registers the tables on Base.metadata
)

config = context.config
url = config.attributes["database_url"]

if context.is_offline_mode():
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()

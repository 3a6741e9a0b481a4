"""Alembic environment for the prediction store. `serving.store.upgrade` passes its open
connection in `config.attributes["connection"]`; the Alembic CLI works too, with the URL in
`-x url=…` or DATABASE_URL."""

from __future__ import annotations

import os

from alembic import context

from riskloop.errors import SettingsError
from serving.store import VERSION_TABLE, make_engine, metadata


def run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    if context.is_offline_mode():
        raise SettingsError("the prediction store migrates online only")
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("DATABASE_URL")
    if not url:
        raise SettingsError("set DATABASE_URL (or pass -x url=…) to migrate the prediction store")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            run(conn)
    finally:
        engine.dispose()


main()

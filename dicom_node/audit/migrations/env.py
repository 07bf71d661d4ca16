"""Alembic environment of the audit database (SQLite or PostgreSQL).

Migrations are applied by the node itself at start-up (``dicom_node.audit.migrations.upgrade``), on the
connection it passes in ``config.attributes["connection"]``; ``alembic -x url=...`` from the command
line works too (e.g. ``alembic -c dicom_node/audit/migrations/alembic.ini -x url=sqlite:///var/spinenode.db
history``).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from dicom_node.audit.records import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("give the database: alembic -x url=sqlite:///var/spinenode.db ...")
    engine = create_engine(url)
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()

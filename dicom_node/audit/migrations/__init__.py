"""Schema migrations of the audit database (Alembic), applied by the node at start-up.

``upgrade(engine)`` brings a database of either back-end to the newest revision in one transaction:

- a new, empty database is created by running every revision from the baseline;
- a database made by the code before migrations (``create_all``: tables but no ``alembic_version``) is
  adopted - stamped with the baseline ``0001`` - and then upgraded like any other;
- on PostgreSQL a transaction-scoped advisory lock serialises the processes that start together (a
  receiver and its workers), so one migrates and the others find the schema current; on SQLite the
  node's ``BEGIN IMMEDIATE`` does the same.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # a line per plugin at every start

HERE = Path(__file__).resolve().parent
BASELINE = "0001"
ADVISORY_LOCK_KEY = 0x5350494E  # "SPIN": PostgreSQL advisory lock held while migrating


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@lru_cache(maxsize=1)
def head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> str | None:
    """Create, adopt or upgrade the database to the newest revision. Returns the revision it was at
    before (None for a new database, ``"adopted"`` for a pre-migration one)."""
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:  # tables copied by batch migrations are referenced: check the keys once, at the end
            _sqlite_pragma(conn, "PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
                before = current(conn)
                if before == head():
                    return before
                cfg = alembic_config(conn)
                if before is None and "jobs" in inspect(conn).get_table_names():
                    log.info("audit database made before migrations: adopting it as revision %s", BASELINE)
                    command.stamp(cfg, BASELINE)
                    before = "adopted"
                command.upgrade(cfg, "head")
                if sqlite and (broken := conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()):
                    raise RuntimeError(f"migration left broken foreign keys: {broken[:5]}")
                log.info("audit database migrated from %s to %s", before or "empty", head())
                return before
        finally:
            if sqlite:
                _sqlite_pragma(conn, "PRAGMA foreign_keys=ON")


def _sqlite_pragma(conn: Connection, pragma: str) -> None:
    """A PRAGMA outside any transaction (foreign_keys is a no-op inside one), on the DBAPI connection."""
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    dbapi.execute(pragma)


__all__ = ["BASELINE", "alembic_config", "current", "head", "upgrade"]

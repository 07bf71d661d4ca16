"""Fixtures of the node's tests that need a database server: a throwaway PostgreSQL cluster and the ``db``
fixture (each test on SQLite, then on PostgreSQL), defined once in ``tests/pg.py``."""

from tests.pg import db, pg_cluster

__all__ = ["db", "pg_cluster"]

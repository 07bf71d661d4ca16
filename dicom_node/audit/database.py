"""Which database the node uses, and engines for a database server.

The URL comes from ``--db-url``, else ``SPINENODE_DB_URL``, else ``[database] url`` in the TOML, else the
embedded default: a SQLite file ``spinenode.db`` in the data directory. ``postgresql+psycopg://USER:PASSWORD
@HOST:PORT/DB`` (psycopg 3) makes PostgreSQL the shared queue and audit of several processes on several
hosts (``postgresql://`` is taken to mean the same driver). Passwords never reach the logs (``redacted``).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url


class DatabaseURLError(ValueError):
    """A database URL the node cannot use."""


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def normalized(url: str) -> str:
    """Check a URL and pick psycopg 3 for PostgreSQL (``postgresql://`` and ``postgres://`` included)."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise DatabaseURLError(f"not a database URL: {redacted(url)}") from exc
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        return parsed.render_as_string(hide_password=False)
    if backend != "sqlite":
        raise DatabaseURLError(f"unsupported database {backend!r}: use sqlite:///FILE or postgresql+psycopg://...")
    if not parsed.database or parsed.database == ":memory:":
        raise DatabaseURLError("SQLite needs a file (sqlite:///path/to/spinenode.db)")
    return url


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL; None for a server."""
    parsed = make_url(url)
    return Path(parsed.database) if parsed.get_backend_name() == "sqlite" and parsed.database else None


def redacted(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - unparseable: show nothing of it
        return "<unparseable URL>"


def server_engine(url: str) -> Engine:
    """An engine for PostgreSQL: a checked pool (a server restart costs one failed ping, not a job)."""
    return create_engine(normalized(url), pool_pre_ping=True, pool_size=5, max_overflow=5, pool_recycle=1800)


__all__ = [
    "DatabaseURLError",
    "normalized",
    "redacted",
    "server_engine",
    "sqlite_path",
    "sqlite_url",
]

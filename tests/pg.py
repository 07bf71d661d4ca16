"""A throwaway PostgreSQL cluster for the tests: Debian's ``postgresql`` binaries, ``initdb`` and ``pg_ctl``
run as the ``postgres`` user in a temporary directory, listening on a free loopback port.

PostgreSQL refuses to run as root, so when the tests run as root the data, socket and log directories are
handed to ``postgres`` and the binaries are run through ``runuser -u postgres --``. The cluster trusts
local connections (a test cluster, never reachable from outside loopback) and is stopped and removed at
teardown. Without the binaries the tests that need it skip with the reason - except in CI
(``CI`` set), where ``make debian-tools`` installs them and a missing binary is a failure.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dicom_node.audit.records import AuditDB
from tests.conftest import free_port

DB_NAME = "spinenode"


def pg_bindir() -> Path | None:
    """The directory with initdb and pg_ctl: Debian's /usr/lib/postgresql/<version>/bin, else $PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key, reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _version_key(path: str) -> float:
    try:
        return float(Path(path).parts[-3])
    except ValueError:
        return 0.0


@dataclass
class PgCluster:
    root: Path
    bindir: Path
    port: int
    user: str  # the OS user running the server (and the database superuser)

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the test database, over TCP on loopback."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{DB_NAME}"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [*args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.root)

    def start(self) -> None:
        data, sock, logs = self.root / "data", self.root / "socket", self.root / "log"
        for d in (data, sock, logs):
            d.mkdir(mode=0o700)
        if os.geteuid() == 0:
            pw = pwd.getpwnam(self.user)
            for d in (self.root, data, sock, logs):
                os.chown(d, pw.pw_uid, pw.pw_gid)
        init = self._run(
            str(self.bindir / "initdb"), "-D", str(data), "-U", self.user, "-A", "trust", "-E", "UTF8",
            "--no-sync", "--locale=C",
        )  # fmt: skip
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr or init.stdout}")
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={sock} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        started = self._run(
            str(self.bindir / "pg_ctl"), "-D", str(data), "-l", str(logs / "postgres.log"), "-o", options,
            "-w", "-t", "60", "start",
        )  # fmt: skip
        if started.returncode != 0:
            log = (logs / "postgres.log").read_text(errors="replace") if (logs / "postgres.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {started.stderr or started.stdout}\n{log}")
        created = self._run(
            str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, DB_NAME
        )
        if created.returncode != 0:
            raise RuntimeError(f"createdb failed: {created.stderr}")

    def create_database(self, name: str) -> str:
        """A new empty database on the cluster; returns its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname=DB_NAME, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        data = self.root / "data"
        if (data / "postmaster.pid").exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop")

    def log_text(self) -> str:
        path = self.root / "log" / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required in CI: make debian-tools installs postgresql)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PgCluster]:
    """A running throwaway PostgreSQL cluster with an empty ``spinenode`` database (one per module)."""
    bindir = pg_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        _skip_or_fail("PostgreSQL server binaries (initdb, pg_ctl) not installed: apt-get install postgresql")
    assert bindir is not None
    user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(user)
        except KeyError:
            _skip_or_fail("no postgres user to run the server as (root cannot run it)")
        if shutil.which("runuser") is None:
            _skip_or_fail("runuser not found (needed to run PostgreSQL as postgres)")
    # not under pytest's tmp_path: its parents are 0700 root, which the postgres user cannot traverse
    root = Path(tempfile.mkdtemp(prefix="spinenode-pg-"))
    os.chmod(root, 0o755)
    cluster = PgCluster(root, bindir, free_port(), user)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        time.sleep(0.2)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuditDB]:
    """An empty audit database: a SQLite file, then a database on the throwaway PostgreSQL cluster."""
    if request.param == "sqlite":
        database = AuditDB(tmp_path / "spinenode.db")
    else:
        cluster: PgCluster = request.getfixturevalue("pg_cluster")
        database = AuditDB(cluster.create_database(f"t_{uuid.uuid4().hex[:12]}"))
    yield database
    database.dispose()

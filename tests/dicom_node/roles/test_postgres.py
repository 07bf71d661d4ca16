"""PostgreSQL as the shared queue and audit.

- Migrations: a new SQLite database is built by the Alembic revisions and equals the models; a database made
  by the code before migrations (``create_all``, no ``alembic_version``) is adopted (stamped, upgraded), the
  old ``outputs`` unique constraint included; a new PostgreSQL database likewise.
- Claims and leases, on SQLite and on a real PostgreSQL server: the worker (host + pid) is recorded, expired
  leases are reclaimed and fence the old holder off, a restart reclaims only dead local workers' jobs,
  concurrent claimers take each job once, deliveries are claimed under a lease.
- The scale-out scenario: a real PostgreSQL cluster (``tests/pg.py``), one receiver process (``spinenode
  serve --workers 0``) and three ``spinenode worker`` processes, 60 images through dcmtk ``storescu``, one
  worker SIGKILLed while it holds a job: every image is delivered to a dcmtk ``storescp`` with one SEG, SR
  and SC UID, the killed worker's job is reclaimed after its lease expired, the survivors share the work and
  no job is completed twice; ``spinenode audit --json`` names each job's worker.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, select, text, update

from bench import reliability
from dicom_node.audit import migrations
from dicom_node.audit.records import (
    AuditDB,
    Base,
    DeliveryAttempt,
    DeliveryRecord,
    DeliveryState,
    InstanceRecord,
    JobRecord,
    JobState,
    JobTransition,
    OutputKind,
    OutputRecord,
    utcnow,
)
from dicom_node.config import NodeConfig, load_config
from dicom_node.delivery.sender import Sender
from dicom_node.queue.jobs import JobQueue
from dicom_node.queue.leases import WorkerIdentity, reclaim_at_start, reclaim_expired, renew
from tests.conftest import PROJECT, TINY_MODEL, require_tool
from tests.pg import PgCluster

pytestmark = pytest.mark.slow  # a throwaway PostgreSQL cluster

# --- helpers -----------------------------------------------------------------------------------------


def _add_jobs(db: AuditDB, n: int, destinations: tuple[str, ...] = ()) -> list[int]:
    ids = []
    with db.session() as s:
        for _ in range(n):
            uid = f"2.25.{uuid.uuid4().int}"
            inst = InstanceRecord(
                sop_instance_uid=uid,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                study_instance_uid=uid + ".1",
                series_instance_uid=uid + ".2",
                transfer_syntax="1.2.840.10008.1.2.1",
                size_bytes=1,
                path=f"/nonexistent/{uid}.dcm",
            )
            s.add(inst)
            s.flush()
            job = JobRecord(instance_id=inst.id, state=JobState.QUEUED, model="m", destinations=list(destinations))
            s.add(job)
            s.flush()
            ids.append(job.id)
    return ids


def _job(db: AuditDB, job_id: int) -> JobRecord:
    with db.session() as s:
        job = s.get(JobRecord, job_id)
        assert job is not None
        return job


def _transitions(db: AuditDB, job_id: int) -> list[tuple[str, str | None, str | None]]:
    with db.session() as s:
        rows = s.scalars(select(JobTransition).where(JobTransition.job_id == job_id).order_by(JobTransition.id))
        return [(t.state.value, t.worker, t.detail) for t in rows]


def _expire(db: AuditDB, job_id: int) -> None:
    with db.session() as s:
        s.execute(
            update(JobRecord).where(JobRecord.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )


# --- migrations ----------------------------------------------------------------------------------------


def _schema_diff(database: AuditDB) -> list[Any]:
    with database.engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), Base.metadata)


def test_new_database_is_built_by_the_migrations(db: AuditDB) -> None:
    with db.engine.connect() as conn:
        assert migrations.current(conn) == migrations.head()
    assert _schema_diff(db) == []  # the revisions make exactly what the models describe
    assert migrations.upgrade(db.engine) == migrations.head()  # upgrading again starts at head ...
    again = AuditDB(db.url)  # ... and so does reopening: it migrates nothing
    try:
        with again.engine.connect() as conn:
            assert migrations.current(conn) == migrations.head()
        assert _schema_diff(again) == []
    finally:
        again.dispose()


def _pre_migration_database(path: Path, old_outputs_constraint: bool) -> None:
    """A database as ``create_all`` made it before migrations: the baseline's tables, no alembic_version;
    optionally with the older ``outputs`` constraint UNIQUE (job_id, kind)."""
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        command.upgrade(migrations.alembic_config(conn), migrations.BASELINE)
        conn.execute(text("DROP TABLE alembic_version"))
        if old_outputs_constraint:
            conn.execute(text("DROP TABLE outputs"))
            conn.execute(
                text(
                    "CREATE TABLE outputs (id INTEGER NOT NULL, job_id INTEGER NOT NULL, kind VARCHAR(16) NOT NULL, "
                    "sop_class_uid VARCHAR(64) NOT NULL, sop_instance_uid VARCHAR(64) NOT NULL, "
                    "series_instance_uid VARCHAR(64) NOT NULL, path TEXT NOT NULL, created_at DATETIME NOT NULL, "
                    "PRIMARY KEY (id), UNIQUE (job_id, kind), FOREIGN KEY(job_id) REFERENCES jobs (id))"
                )
            )
            conn.execute(text("CREATE INDEX ix_outputs_job_id ON outputs (job_id)"))
            conn.execute(text("CREATE INDEX ix_outputs_sop_instance_uid ON outputs (sop_instance_uid)"))
        now = "2026-11-01 10:00:00"
        conn.execute(
            text(
                "INSERT INTO instances (id, sop_instance_uid, sop_class_uid, study_instance_uid, series_instance_uid,"
                " transfer_syntax, size_bytes, path, received_at, times_received)"
                f" VALUES (1, '1.2.3', '1.2.840.10008.5.1.4.1.1.1.1', '1.2', '1.2.1', '1.2.840.10008.1.2.1', 10,"
                f" '/x.dcm', '{now}', 1)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO jobs (id, instance_id, state, model, destinations, called_ae, attempts, created_at)"
                f" VALUES (1, 1, 'running', 'm', '[\"A@h:1\"]', 'SPINENODE', 1, '{now}')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO outputs (id, job_id, kind, sop_class_uid, sop_instance_uid, series_instance_uid, path,"
                f" created_at) VALUES (1, 1, 'seg', '1.2.840.10008.5.1.4.1.1.66.4', '1.2.3.9', '1.2.3.8', '/o',"
                f" '{now}')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO deliveries (id, output_id, destination, state, attempts, next_attempt_at, created_at)"
                f" VALUES (1, 1, 'A@h:1', 'pending', 0, '{now}', '{now}')"
            )
        )
    engine.dispose()


@pytest.mark.parametrize("old_outputs_constraint", [False, True], ids=["current-create-all", "old-outputs-unique"])
def test_pre_migration_sqlite_database_is_adopted(tmp_path: Path, old_outputs_constraint: bool) -> None:
    path = tmp_path / "spinenode.db"
    _pre_migration_database(path, old_outputs_constraint)
    database = AuditDB(path)
    try:
        with database.engine.connect() as conn:
            assert migrations.current(conn) == migrations.head()
            uniques = [u["column_names"] for u in inspect(conn).get_unique_constraints("outputs")]
            assert uniques == [["job_id", "kind", "sop_instance_uid"]]
            assert conn.execute(text("PRAGMA foreign_key_check")).fetchall() == []
        # the rows survived, the new columns are empty; the deliveries still reference their output
        job = _job(database, 1)
        assert job.state == JobState.RUNNING and job.worker_host is None and job.lease_expires_at is None
        with database.session() as s:
            delivery = s.get(DeliveryRecord, 1)
            assert delivery is not None and delivery.output.sop_instance_uid == "1.2.3.9"
            # two evaluation SRs of one job: what the old constraint refused
            for n in (1, 2):
                s.add(
                    OutputRecord(
                        job_id=1,
                        kind=OutputKind.EVAL_SR,
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                        sop_instance_uid=f"1.2.3.{20 + n}",
                        series_instance_uid="1.2.3.30",
                        path=f"/e{n}",
                    )
                )
        # the job a pre-lease process left running is queued again at start-up
        assert JobQueue(database).recover() == 1
        assert _job(database, 1).state == JobState.QUEUED
        assert _schema_diff(database) == []
    finally:
        database.dispose()


def test_db_url_from_flag_environment_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "node.toml"
    toml.write_text('[database]\nurl = "postgresql://file@db/spinenode"\nlease_s = 7\n')
    assert load_config(toml).db_url == "postgresql+psycopg://file@db/spinenode"  # psycopg 3 picked
    assert load_config(toml).lease_s == 7
    monkeypatch.setenv("SPINENODE_DB_URL", "postgresql+psycopg://env@db/spinenode")
    assert load_config(toml).db_url == "postgresql+psycopg://env@db/spinenode"
    assert load_config(toml, db_url="sqlite:////tmp/x.db").db_url == "sqlite:////tmp/x.db"
    monkeypatch.delenv("SPINENODE_DB_URL")
    default = load_config(None, data_dir=tmp_path)
    assert default.db_url is None and default.database_url == f"sqlite:///{tmp_path / 'spinenode.db'}"


# --- claims and leases ---------------------------------------------------------------------------------

A = WorkerIdentity("host-a", 111)
B = WorkerIdentity("host-b", 222)


def test_claim_records_the_worker_and_its_lease(db: AuditDB) -> None:
    first, second, _ = _add_jobs(db, 3)
    qa, qb = JobQueue(db, A, lease_s=30), JobQueue(db, B, lease_s=30)
    assert qa.claim() == (first, 1) and qb.claim() == (second, 1)
    job = _job(db, first)
    assert (job.state, job.worker_host, job.worker_pid, job.attempts) == (JobState.RUNNING, "host-a", 111, 1)
    assert job.lease_expires_at is not None
    assert 25 < (job.lease_expires_at - utcnow()).total_seconds() <= 30
    assert _transitions(db, first)[-1][:2] == ("running", "host-a:111")
    assert qa.finish(first, 1, JobState.FAILED, "test") is True
    assert _job(db, first).lease_expires_at is None


def test_expired_lease_is_reclaimed_and_fences_the_old_holder(db: AuditDB) -> None:
    (job_id,) = _add_jobs(db, 1)
    qa, qb = JobQueue(db, A, lease_s=30), JobQueue(db, B, lease_s=30)
    assert qa.claim() == (job_id, 1)
    assert reclaim_expired(db, B) == 0  # a live lease is left alone
    _expire(db, job_id)
    assert reclaim_expired(db, B) == 1
    state, worker, detail = _transitions(db, job_id)[-1]
    assert state == "queued" and worker == "host-b:222" and "lease expired" in (detail or "")
    assert "host-a:111" in (detail or "")
    assert qb.claim() == (job_id, 2)
    job = _job(db, job_id)
    assert (job.worker_host, job.attempts) == ("host-b", 2)
    assert not qa.holds(job) and qb.holds(job, attempt=2) and not qb.holds(job, attempt=1)
    assert qa.finish(job_id, 1, JobState.FAILED, "too late") is False  # A lost it: nothing recorded
    assert renew(db, A, 30) == 0  # A's heartbeat no longer extends it
    assert _job(db, job_id).state == JobState.RUNNING
    assert qb.finish(job_id, 2, JobState.DONE) is True


def test_a_thread_whose_claim_was_retaken_by_its_own_process_cannot_finish_it(db: AuditDB) -> None:
    """Threads of one process share its identity (host:pid): the attempt is the fencing token."""
    (job_id,) = _add_jobs(db, 1)
    t1, t2 = JobQueue(db, A, lease_s=30), JobQueue(db, A, lease_s=30)  # two worker threads of process A
    assert t1.claim() == (job_id, 1)
    _expire(db, job_id)
    assert reclaim_expired(db, A) == 1
    assert t2.claim() == (job_id, 2)
    assert t1.finish(job_id, 1, JobState.FAILED, "stale thread", error="stale") is False
    job = _job(db, job_id)
    assert (job.state, job.attempts, job.error, job.finished_at) == (JobState.RUNNING, 2, None, None)
    assert job.lease_expires_at is not None  # still t2's lease
    assert _transitions(db, job_id)[-1][:2] == ("running", "host-a:111")
    assert t2.finish(job_id, 2, JobState.DONE) is True
    assert _job(db, job_id).state == JobState.DONE


def test_renewal_keeps_a_slow_job(db: AuditDB) -> None:
    (job_id,) = _add_jobs(db, 1)
    qa = JobQueue(db, A, lease_s=30)
    assert qa.claim() == (job_id, 1)
    _expire(db, job_id)
    assert renew(db, A, 30) == 1  # the heartbeat came in time
    assert reclaim_expired(db, B) == 0


def test_start_up_reclaims_only_jobs_of_dead_workers_on_this_host(db: AuditDB) -> None:
    me = WorkerIdentity.current()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        jobs = _add_jobs(db, 5)
        holders = [
            (me.host, dead.pid, 30),  # a crashed process of this host: reclaimed at once
            (me.host, live.pid, 30),  # a live worker on this host: kept
            ("other-host", 4242, 30),  # another host's worker, lease valid: kept
            ("other-host", 4343, -1),  # another host's worker, lease expired: reclaimed
            (None, None, 30),  # a job left running before leases existed: reclaimed
        ]
        with db.session() as s:
            for job_id, (host, pid, lease) in zip(jobs, holders, strict=True):
                job = s.get(JobRecord, job_id)
                assert job is not None
                job.state, job.worker_host, job.worker_pid = JobState.RUNNING, host, pid
                job.lease_expires_at = utcnow() + timedelta(seconds=lease)
        owners = [f"{me.host}:{dead.pid}", f"{me.host}:{live.pid}", "other-host:4242"]
        deliveries = _add_deliveries(db, jobs[0], ports=(104, 105, 106))
        with db.session() as s:
            for delivery_id, owner in zip(deliveries, owners, strict=True):
                s.execute(
                    update(DeliveryRecord)
                    .where(DeliveryRecord.id == delivery_id)
                    .values(lease_owner=owner, lease_expires_at=utcnow() + timedelta(seconds=30))
                )
        assert reclaim_at_start(db, me) == 3
        states = [_job(db, j).state for j in jobs]
        assert states == [JobState.QUEUED, JobState.RUNNING, JobState.RUNNING, JobState.QUEUED, JobState.QUEUED]
        with db.session() as s:
            leases = [(d.lease_owner, d.lease_expires_at is None) for d in s.scalars(select(DeliveryRecord))]
        assert sorted(leases, key=str) == sorted(
            [(None, True), (owners[1], False), (owners[2], False)], key=str
        )  # the dead local sender's delivery is released; a live one's and another host's are kept
    finally:
        live.kill()
        live.wait()


def test_concurrent_claimers_take_each_job_once(db: AuditDB) -> None:
    jobs = _add_jobs(db, 40)
    taken: dict[str, list[int]] = defaultdict(list)

    def work(i: int) -> None:
        queue = JobQueue(db, WorkerIdentity(f"host-{i}", 1000 + i), lease_s=30)
        while (claimed := queue.claim()) is not None:
            taken[f"host-{i}"].append(claimed[0])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    claimed = [j for ids in taken.values() for j in ids]
    assert sorted(claimed) == sorted(jobs)  # every job once, none twice
    with db.session() as s:
        for job_id in jobs:
            job = s.get(JobRecord, job_id)
            assert job is not None and job.attempts == 1
            assert job_id in taken[job.worker_host or ""]


def _add_deliveries(db: AuditDB, job_id: int, ports: tuple[int, ...] = (104, 105)) -> list[int]:
    with db.session() as s:
        out = OutputRecord(
            job_id=job_id, kind=OutputKind.SEG, sop_class_uid="1.2", sop_instance_uid="1.2.3", series_instance_uid="1.2"
        )
        out.path = "/nonexistent"
        s.add(out)
        s.flush()
        rows = [
            DeliveryRecord(output_id=out.id, destination=f"PACS@127.0.0.1:{port}", state=DeliveryState.PENDING)
            for port in ports
        ]
        s.add_all(rows)
        s.flush()
        return [d.id for d in rows]


def test_deliveries_are_claimed_under_a_lease(db: AuditDB, tmp_path: Path) -> None:
    (job_id,) = _add_jobs(db, 1)
    _add_deliveries(db, job_id)
    config = NodeConfig(data_dir=tmp_path, lease_s=30)
    attempted: dict[str, list[int]] = defaultdict(list)

    def sender(me: WorkerIdentity) -> Sender:
        snd = Sender(config, db, me)
        snd._deliver = lambda dest, items: attempted[str(me)].extend(i for i, _ in items)  # type: ignore[method-assign]
        return snd

    sa, sb = sender(A), sender(B)
    assert sa.run_once() == 2 and sb.run_once() == 0  # A holds both while it sends
    with db.session() as s:
        assert {d.lease_owner for d in s.scalars(select(DeliveryRecord))} == {"host-a:111"}
        s.execute(update(DeliveryRecord).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert reclaim_expired(db, B) == 0  # no job, but A's delivery leases are released
    assert sb.run_once() == 2
    assert sorted(attempted["host-a:111"]) == sorted(attempted["host-b:222"])


def test_a_sender_whose_delivery_lease_was_retaken_only_logs_its_attempt(db: AuditDB, tmp_path: Path) -> None:
    (job_id,) = _add_jobs(db, 1)
    ids = _add_deliveries(db, job_id)
    config = NodeConfig(data_dir=tmp_path, lease_s=30)
    sa, sb = Sender(config, db, A), Sender(config, db, B)
    sb._deliver = lambda dest, items: None  # type: ignore[method-assign] # B claims, sends later

    taken: list[bool] = []

    def slow_send(dest: Any, paths: list[str], tls_args: Any) -> list[tuple[int | None, str | None]]:
        if not taken:  # A's first send outlasted its lease: B reclaimed and claimed both deliveries meanwhile
            with db.session() as s:
                s.execute(update(DeliveryRecord).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
            assert reclaim_expired(db, B) == 0
            assert sb.run_once() == 2
            taken.append(True)
        return [(0x0000, None)] * len(paths)  # the peer accepted

    sa.connections.send = slow_send  # type: ignore[method-assign]
    assert sa.run_once() == 2  # the real _deliver, once per destination
    with db.session() as s:
        deliveries = {d.id: d for d in s.scalars(select(DeliveryRecord))}
        attempts = list(s.scalars(select(DeliveryAttempt)))
    assert sorted(a.delivery_id for a in attempts) == sorted(ids)  # A's attempts are logged ...
    assert all(a.status == 0x0000 for a in attempts)
    for d in deliveries.values():  # ... but the deliveries stay B's, pending and uncounted
        assert (d.state, d.lease_owner, d.attempts, d.last_status) == (DeliveryState.PENDING, "host-b:222", 0, None)
        assert d.lease_expires_at is not None


# --- one receiver, three worker processes, a SIGKILL -----------------------------------------------------

N_IMAGES = 60
LEASE_S = 3.0


def _wait(condition: Any, timeout: float, what: str, procs: list[subprocess.Popen[bytes]] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs or []:
            assert p.poll() is None, f"a node process exited ({p.returncode}) while waiting for {what}"
        if condition():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what}: not after {timeout} s")


def test_receiver_and_three_workers_survive_a_sigkilled_worker(
    pg_cluster: PgCluster,
    tmp_path: Path,
    models_root: Path,
) -> None:
    require_tool("storescu")
    require_tool("storescp")
    started = time.monotonic()
    url = pg_cluster.create_database("scaleout")
    files = reliability.make_phantoms(tmp_path / "phantoms", N_IMAGES, first_seed=880000, height=320)
    sources = {str(reliability.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    dest = reliability.Destination(tmp_path / "received", fork=True)
    dest.start()
    port = reliability.free_port()
    config = tmp_path / "node.toml"
    config.write_text(
        "[node]\n"
        f'ae_title = "SPINENODE"\nbind = "127.0.0.1"\nport = {port}\ndata_dir = "{tmp_path / "shared-storage"}"\n'
        f'model = "{TINY_MODEL}"\ndestinations = ["{dest.spec}"]\nworkers = 1\nmax_backlog = 5000\n'
        "min_free_disk_mb = 50\n"
        "[retry]\ninitial_s = 0.5\nmax_s = 2.0\nmax_attempts = 200\n"
        f'[database]\nurl = "{url}"\nlease_s = {LEASE_S}\n'
    )
    engine = create_engine(url)

    def q(sql: str, **params: Any) -> list[Any]:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params))

    # the four processes start together: they migrate the empty database under the advisory lock
    receiver = reliability.spawn_cli(["serve", "--config", str(config), "--workers", "0"], tmp_path / "receiver.log")
    workers = [
        reliability.spawn_cli(["worker", "--config", str(config)], tmp_path / f"worker{i}.log") for i in range(3)
    ]
    procs = [receiver, *workers]
    try:
        reliability.wait_port(port, 120, receiver)
        _wait(lambda: len(q("SELECT 1 FROM events WHERE kind = 'worker_ready'")) == 3, 150, "3 workers", procs)
        results = reliability.send(port, files)
        assert [r for _, r in results] == ["Success"] * N_IMAGES

        # SIGKILL worker 0 while it holds a job: freeze it, look, kill (or let it go and look again)
        victim = workers[0]
        held: list[Any] = []
        deadline = time.monotonic() + 60
        while not held and time.monotonic() < deadline:
            victim.send_signal(signal.SIGSTOP)
            held = q("SELECT id FROM jobs WHERE state = 'running' AND worker_pid = :pid", pid=victim.pid)
            if held:
                victim.send_signal(signal.SIGKILL)
            else:
                victim.send_signal(signal.SIGCONT)
                time.sleep(0.02)
        assert held, "the victim worker never held a job"
        victim.wait(10)
        killed_job = held[0][0]
        killed_at = time.monotonic()

        def settled() -> bool:
            states = dict(q("SELECT state, count(*) FROM jobs GROUP BY state"))
            pending = q("SELECT count(*) FROM deliveries WHERE state <> 'delivered'")[0][0]
            return states.get("done", 0) == N_IMAGES and pending == 0

        _wait(settled, 150, "all jobs done and delivered", [receiver, *workers[1:]])
        _wait(lambda: len({uid for _, uid, _ in dest.received()}) >= 3 * N_IMAGES, 30, "files at storescp")
        settle_s = time.monotonic() - killed_at

        # every image delivered with exactly one SEG, one SR and one SC UID
        per_source: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        for sop_class, uid, refs in dest.received():
            kind = reliability.KINDS.get(sop_class)
            for source in refs & sources if kind else ():
                per_source[source][kind].add(uid)
        assert set(per_source) == sources
        for source, kinds in per_source.items():
            assert {k: len(v) for k, v in kinds.items()} == {"seg": 1, "sr": 1, "sc": 1}, source
        audit = q(
            "SELECT i.sop_instance_uid, o.kind, o.sop_instance_uid FROM outputs o JOIN jobs j ON o.job_id = j.id "
            "JOIN instances i ON j.instance_id = i.id"
        )
        assert len(audit) == 3 * N_IMAGES
        for source, kind, uid in audit:
            assert per_source[source][kind] == {uid}

        # no job completed twice; the killed worker's job went back to the queue once its lease expired
        done = Counter(j for (j,) in q("SELECT job_id FROM job_transitions WHERE state = 'done'"))
        assert len(done) == N_IMAGES and set(done.values()) == {1}
        history = q("SELECT state, worker, detail FROM job_transitions WHERE job_id = :j ORDER BY id", j=killed_job)
        victim_name = f"{socket.gethostname()}:{victim.pid}"
        states = [(s, w) for s, w, _ in history]
        i = states.index(("running", victim_name))
        assert (
            states[i + 1][0] == "queued" and "lease expired" in history[i + 1][2] and victim_name in history[i + 1][2]
        )
        assert states[i + 2][0] == "running" and states[-1][0] == "done" and states[-1][1] != victim_name
        assert q("SELECT count(*) FROM events WHERE kind = 'lease_lost'")[0][0] == 0

        # the survivors shared the work; every job names the worker that ran it
        ran = Counter(pid for (pid,) in q("SELECT worker_pid FROM jobs"))
        survivors = {w.pid for w in workers[1:]}
        assert set(ran) <= survivors | {victim.pid}
        assert all(ran[pid] >= 3 for pid in survivors), ran
        assert ran[victim.pid] < N_IMAGES

        out = subprocess.run(
            [sys.executable, "-m", "dicom_node.cli", "audit", "--json", "--limit", "100", "--db-url", url],
            capture_output=True,
            text=True,
            cwd=PROJECT,
            timeout=120,
            check=True,
        )
        report = json.loads(out.stdout)
        assert len(report["jobs"]) == N_IMAGES
        assert all(j["worker"]["host"] == socket.gethostname() and j["worker"]["pid"] in ran for j in report["jobs"])
        killed = next(j for j in report["jobs"] if j["id"] == killed_job)
        assert any(t["worker"] == victim_name for t in killed["transitions"])

        assert [reliability.stop_process(p) for p in [receiver, *workers[1:]]] == [0, 0, 0]
        print(
            f"\n{N_IMAGES} images, 3 workers (one SIGKILLed holding job {killed_job}): settled "
            f"{settle_s:.1f} s after the kill, {time.monotonic() - started:.1f} s in all; jobs per worker {dict(ran)}"
        )
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                reliability.stop_process(p)
        dest.stop()
        engine.dispose()

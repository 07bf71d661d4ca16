"""The audit database: every association, instance, job, output, delivery (with attempts) and event,
and every received SEG with the comparisons of the model against reference segmentations.

SQLite in WAL mode with a busy timeout is the embedded default. Records are written explicitly by the
parts that act (receiver, workers, sender) - never as a side effect of logging. State values are text
enums. Logs and this database carry UIDs, never patient names or IDs.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 10_000


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class JobState(enum.StrEnum):
    RECEIVED = "received"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    COMMITTING = "committing"  # stored; the destination's storage commitment report is awaited
    DELIVERED = "delivered"
    FAILED = "failed"


class OutputKind(enum.StrEnum):
    SEG = "seg"
    SR = "sr"
    SC = "sc"
    EVAL_SR = "eval_sr"  # accuracy against a reference SEG (one per reference; a job may have several)


class ReferenceState(enum.StrEnum):
    """What became of a received SEG (one row per SEG and referenced source image)."""

    OWN_OUTPUT = "own_output"  # one of the node's own SEGs sent back: stored, never compared
    WAITING = "waiting"  # a reference whose source image has no finished job yet
    DUE = "due"  # the source's job is done: to be compared
    EVALUATING = "evaluating"  # a worker is comparing it
    EVALUATED = "evaluated"  # compared; the comparisons and the evaluation SR are recorded
    UNUSABLE = "unusable"  # no segment we predict, or masks not at the source's size: nothing to compare
    FAILED = "failed"  # an unexpected error (re-sending the SEG tries again)


class Base(DeclarativeBase):
    pass


def _enum(cls: type[enum.Enum]) -> Enum:
    return Enum(cls, native_enum=False, values_callable=lambda e: [m.value for m in e], length=16)


class AssociationRecord(Base):
    __tablename__ = "associations"
    id: Mapped[int] = mapped_column(primary_key=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    called_ae: Mapped[str] = mapped_column(String(16))
    peer_address: Mapped[str] = mapped_column(String(64))
    peer_port: Mapped[int] = mapped_column(Integer, default=0)
    direction: Mapped[str] = mapped_column(String(8), default="in")  # in (SCP) or out (our C-STORE)
    accepted: Mapped[bool] = mapped_column(default=True)
    reason: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)


class InstanceRecord(Base):
    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    size_bytes: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    association_id: Mapped[int | None] = mapped_column(ForeignKey("associations.id"))
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    times_received: Mapped[int] = mapped_column(Integer, default=1)
    pruned_at: Mapped[datetime | None] = mapped_column(DateTime)  # the file was deleted (retention)


class JobRecord(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), unique=True)
    state: Mapped[JobState] = mapped_column(_enum(JobState), index=True)
    model: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(64))
    destinations: Mapped[list[str]] = mapped_column(JSON, default=list)
    called_ae: Mapped[str] = mapped_column(String(16), default="")
    flip_agreement: Mapped[bool | None] = mapped_column(Boolean)  # the route's choice; NULL: the node's setting
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    inference_ms: Mapped[float | None] = mapped_column(Float)
    total_ms: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    # the worker process (host + pid) holding the job while running, then the one that ran it
    worker_host: Mapped[str | None] = mapped_column(String(255))
    worker_pid: Mapped[int | None] = mapped_column(Integer)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)  # then reclaimable
    instance: Mapped[InstanceRecord] = relationship()
    outputs: Mapped[list[OutputRecord]] = relationship(back_populates="job", order_by="OutputRecord.id")
    transitions: Mapped[list[JobTransition]] = relationship(order_by="JobTransition.id")


class JobTransition(Base):
    __tablename__ = "job_transitions"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    state: Mapped[JobState] = mapped_column(_enum(JobState))
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    detail: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(300))  # host:pid of the process that made it


class OutputRecord(Base):
    __tablename__ = "outputs"
    # SEG, SR and SC: one per job (Processor.run updates the row); EVAL_SR: one per reference SEG.
    __table_args__ = (UniqueConstraint("job_id", "kind", "sop_instance_uid"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    kind: Mapped[OutputKind] = mapped_column(_enum(OutputKind))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    pruned_at: Mapped[datetime | None] = mapped_column(DateTime)  # the file was deleted (retention)
    job: Mapped[JobRecord] = relationship(back_populates="outputs")
    deliveries: Mapped[list[DeliveryRecord]] = relationship(back_populates="output", order_by="DeliveryRecord.id")


class DeliveryRecord(Base):
    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("output_id", "destination"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    output_id: Mapped[int] = mapped_column(ForeignKey("outputs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(128))  # AE@HOST:PORT
    state: Mapped[DeliveryState] = mapped_column(_enum(DeliveryState), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(300))  # host:pid of the sender sending it
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    # storage commitment (dicom_node.delivery.commitment): the open request's transaction, when, how many
    commit_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    commit_requested_at: Mapped[datetime | None] = mapped_column(DateTime)
    commit_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    committed_at: Mapped[datetime | None] = mapped_column(DateTime)
    output: Mapped[OutputRecord] = relationship(back_populates="deliveries")
    attempt_log: Mapped[list[DeliveryAttempt]] = relationship(order_by="DeliveryAttempt.id")


class DeliveryAttempt(Base):
    __tablename__ = "delivery_attempts"
    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float | None] = mapped_column(Float)


class ReceivedSegRecord(Base):
    """A received Segmentation and one source image it references, with what became of it."""

    __tablename__ = "received_segs"
    __table_args__ = (UniqueConstraint("instance_id", "source_sop_uid"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), index=True)
    source_sop_uid: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[ReferenceState] = mapped_column(_enum(ReferenceState), index=True)
    detail: Mapped[str | None] = mapped_column(Text)  # why it is our own output, unusable or failed
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))  # the source's job, once compared
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    # while evaluating: the worker process comparing it (host:pid) and when another may take it back
    lease_owner: Mapped[str | None] = mapped_column(String(300))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    instance: Mapped[InstanceRecord] = relationship()


class ComparisonRecord(Base):
    """One segment of a prediction compared with a reference segmentation (true Dice/IoU)."""

    __tablename__ = "comparisons"
    __table_args__ = (UniqueConstraint("received_seg_id", "segment"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    received_seg_id: Mapped[int] = mapped_column(ForeignKey("received_segs.id"), index=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    model: Mapped[str] = mapped_column(String(64), index=True)
    model_version: Mapped[str] = mapped_column(String(64))  # weights SHA-256 prefix
    source_sop_uid: Mapped[str] = mapped_column(String(64))
    reference_sop_uid: Mapped[str] = mapped_column(String(64), index=True)
    segment: Mapped[str] = mapped_column(String(64))  # our segment label ("Spine", "T1 vertebra")
    reference_segments: Mapped[list[int]] = mapped_column(JSON, default=list)  # matched reference numbers
    dice: Mapped[float | None] = mapped_column(Float)  # None when both masks are empty
    jaccard: Mapped[float | None] = mapped_column(Float)
    intersection_pixels: Mapped[int] = mapped_column(Integer)
    predicted_pixels: Mapped[int] = mapped_column(Integer)
    reference_pixels: Mapped[int] = mapped_column(Integer)
    eval_sr_sop_uid: Mapped[str | None] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)


class EventRecord(Base):
    """Everything else worth keeping: refusals, duplicates, start-up, recovery, errors."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    association_id: Mapped[int | None] = mapped_column(Integer)
    job_id: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(Text)


class AuditDB:
    """Engine + session factory for one database: a SQLite file (a path, or a ``sqlite:///`` URL) or a
    PostgreSQL server (``postgresql+psycopg://...``). The schema is brought up to date by the Alembic
    migrations (``dicom_node.audit.migrations``) when it is opened."""

    def __init__(self, target: Path | str) -> None:
        from dicom_node.audit import database, migrations

        self.url = database.sqlite_url(target) if isinstance(target, Path) else str(target)
        sqlite_file = database.sqlite_path(self.url)
        self.path: Path | None = sqlite_file
        if sqlite_file is not None:
            sqlite_file.parent.mkdir(parents=True, exist_ok=True)
            # 0600 before SQLite opens it: its -wal and -shm files are created with the database's mode
            sqlite_file.touch(mode=0o600, exist_ok=True)
            os.chmod(sqlite_file, 0o600)
            self.engine: Engine = create_engine(
                database.sqlite_url(sqlite_file),
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            )
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin_immediate)
        else:
            self.engine = database.server_engine(self.url)
        self.is_sqlite = sqlite_file is not None
        migrations.upgrade(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One short transaction; committed on success, rolled back on error."""
        with self._sessions() as s, s.begin():
            yield s

    def record_event(self, kind: str, detail: str | None = None, **fields: Any) -> None:
        with self.session() as s:
            s.add(EventRecord(kind=kind, detail=detail, **fields))

    def events(self, kind: str | None = None) -> list[EventRecord]:
        with self.session() as s:
            q = select(EventRecord).order_by(EventRecord.id)
            if kind:
                q = q.where(EventRecord.kind == kind)
            return list(s.scalars(q))

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # let SQLAlchemy's "begin" hook issue BEGIN IMMEDIATE
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")  # an acknowledged instance's row survives power loss
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin_immediate(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")

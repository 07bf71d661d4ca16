"""Retention: delete received instances and outputs once they are delivered and old enough, audited.

What may go (``prunable``):
- an **output** (SEG, SR, SC, evaluation SR) whose job is done and every delivery of which is delivered,
  ``outputs_days`` after its last delivery (or after it was written, when it had no destination); never a
  SEG whose source image still has a reader's reference SEG waiting to be compared with it;
- a **received image** whose job is done and all of whose outputs are delivered, ``instances_days`` after
  the last of those deliveries; never one a reference SEG is still waiting for;
- a **reference SEG** (a reader's, or our own sent back) once every source it references is compared
  (or found not comparable), ``instances_days`` after that.

Never touched: a job not done (queued, running - or failed, which the operator resolves), an output with
a delivery pending or failed, anything of a reference still awaited. Audit rows are kept: each pruned file
gets ``pruned_at`` on its ``instances``/``outputs`` row and a ``pruned`` event (what, why, bytes), so
``spinenode audit``, ``/api/jobs`` and the web page show the job with its files marked pruned.

Order: the row is marked pruned and the event committed first, then the file is unlinked - a crash in
between leaves a marked file on disk, removed by the next pass (never an unaudited deletion). One pruner
at a time: on PostgreSQL the pass holds an advisory lock, on SQLite a lock file beside the database (the
processes of ``serve --workers auto``), so several workers never prune together.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import selectinload

from dicom_node.audit.records import (
    AuditDB,
    DeliveryState,
    EventRecord,
    InstanceRecord,
    JobRecord,
    JobState,
    OutputKind,
    OutputRecord,
    ReceivedSegRecord,
    ReferenceState,
    utcnow,
)
from dicom_node.retention.policy import RetentionPolicy
from dicom_node.storage import Storage

log = logging.getLogger(__name__)

LOCK_FILE_MODE = 0o600  # like every file of the data directory
ADVISORY_LOCK_KEY = 0x5350_494E  # "SPIN": the PostgreSQL advisory lock one pruning pass holds
AWAITED = (ReferenceState.WAITING, ReferenceState.DUE, ReferenceState.EVALUATING)
MB = 2**20


@dataclass(frozen=True)
class Prunable:
    kind: str  # "instance", "reference", or the output kind ("seg", "sr", "sc", "eval_sr")
    row_id: int
    sop_instance_uid: str
    path: str
    job_id: int | None
    reason: str
    bytes: int = 0


@dataclass
class PruneReport:
    dry_run: bool
    files: list[Prunable] = field(default_factory=list)
    skipped: str | None = None  # why nothing was done (another pruner holds the lock)

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "skipped": self.skipped,
            "files": len(self.files),
            "bytes": self.bytes,
            "pruned": [
                {"kind": f.kind, "sop_instance_uid": f.sop_instance_uid, "job_id": f.job_id, "bytes": f.bytes}
                | {"reason": f.reason}
                for f in self.files
            ],
        }


def _size(path: str) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def _days(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 86400:.1f} days"


def prunable(db: AuditDB, policy: RetentionPolicy, now: datetime | None = None) -> list[Prunable]:
    """Everything ``policy`` allows to delete now, with the reason for each (see the module docstring)."""
    now = now or utcnow()
    out_cut = now - timedelta(days=policy.outputs_days)
    inst_cut = now - timedelta(days=policy.instances_days)
    found: list[Prunable] = []
    with db.session() as s:
        awaited = set(s.scalars(select(ReceivedSegRecord.source_sop_uid).where(ReceivedSegRecord.state.in_(AWAITED))))
        jobs = s.scalars(
            select(JobRecord)
            .where(JobRecord.state == JobState.DONE)
            .where(  # only jobs with a file still on disk: a pass does not grow with the pruned history
                JobRecord.instance.has(InstanceRecord.pruned_at.is_(None))
                | JobRecord.outputs.any(OutputRecord.pruned_at.is_(None))
            )
            .options(
                selectinload(JobRecord.instance),
                selectinload(JobRecord.outputs).selectinload(OutputRecord.deliveries),
            )
        )
        for job in jobs:
            source_uid = job.instance.sop_instance_uid
            settled: list[datetime] = []
            all_delivered = True
            for out in job.outputs:
                states = {d.state for d in out.deliveries}
                if states - {DeliveryState.DELIVERED}:
                    all_delivered = False
                    continue
                last = max((d.delivered_at or out.created_at for d in out.deliveries), default=out.created_at)
                settled.append(last)
                keep_for_reference = out.kind == OutputKind.SEG and source_uid in awaited
                if out.pruned_at is None and last < out_cut and not keep_for_reference:
                    why = (
                        f"delivered to every destination {_days(now - last)} ago"
                        if out.deliveries
                        else (f"written {_days(now - last)} ago, no destination")
                    )
                    found.append(Prunable(out.kind.value, out.id, out.sop_instance_uid, out.path, job.id, why))
            last_settled = max(settled, default=job.finished_at or job.created_at)
            inst = job.instance
            if inst.pruned_at is None and all_delivered and source_uid not in awaited and last_settled < inst_cut:
                why = f"job done and every output delivered {_days(now - last_settled)} ago"
                found.append(Prunable("instance", inst.id, source_uid, inst.path, job.id, why))
        refs: dict[int, list[ReceivedSegRecord]] = {}
        live = ReceivedSegRecord.instance.has(InstanceRecord.pruned_at.is_(None))
        for ref in s.scalars(select(ReceivedSegRecord).where(live).options(selectinload(ReceivedSegRecord.instance))):
            refs.setdefault(ref.instance_id, []).append(ref)
        for rows in refs.values():
            inst = rows[0].instance
            if inst.pruned_at is not None or any(r.state in AWAITED for r in rows):
                continue
            done_at = max((r.finished_at or r.received_at for r in rows), default=inst.received_at)
            if done_at < inst_cut:
                why = f"reference segmentation settled ({', '.join(sorted({r.state.value for r in rows}))}) "
                found.append(
                    Prunable(
                        "reference",
                        inst.id,
                        inst.sop_instance_uid,
                        inst.path,
                        None,
                        why + _days(now - done_at) + " ago",
                    )
                )
    return [Prunable(f.kind, f.row_id, f.sop_instance_uid, f.path, f.job_id, f.reason, _size(f.path)) for f in found]


_THIS_PROCESS = threading.Lock()  # one pass at a time in this process (the advisory lock covers the others)


@contextlib.contextmanager
def _one_pruner(db: AuditDB) -> Iterator[bool]:
    """Yields whether this pass may prune: this process's lock and, on PostgreSQL, an advisory lock."""
    if not _THIS_PROCESS.acquire(blocking=False):
        yield False
        return
    try:
        if db.is_sqlite:  # the processes sharing the file (serve --workers auto): a lock file beside it
            with _sqlite_lock(db) as held:
                yield held
            return
        with db.engine.connect() as conn:
            if not conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY}):
                yield False
                return
            try:
                yield True
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
    finally:
        _THIS_PROCESS.release()


@contextlib.contextmanager
def _sqlite_lock(db: AuditDB) -> Iterator[bool]:
    """Whether this process holds the pruning lock of the SQLite file (``<file>.prune-lock``, flock);
    an in-memory database is one process's own."""
    database = db.engine.url.database
    if not database or database == ":memory:":
        yield True
        return
    fd = os.open(f"{database}.prune-lock", os.O_RDWR | os.O_CREAT, LOCK_FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def prune(
    db: AuditDB,
    storage: Storage,
    policy: RetentionPolicy,
    now: datetime | None = None,
    dry_run: bool = False,
    sweep: bool = False,
) -> PruneReport:
    """One pass: find what ``policy`` allows and delete it (or, ``dry_run``, only say what). ``sweep``
    also unlinks files marked pruned by a pass that died before unlinking them (a start-up's first pass)."""
    report = PruneReport(dry_run)
    with _one_pruner(db) as mine:
        if not mine:
            report.skipped = "another pruner is running"
            return report
        candidates = prunable(db, policy, now)
        if dry_run:
            report.files = candidates
            return report
        for item in candidates:
            if _mark(db, item, now or utcnow()):
                _unlink(storage, item.path)
                report.files.append(item)
        if sweep:
            for path in _marked_leftovers(db):
                _unlink(storage, path)
    if report.files:
        log.info("pruned %d files, %.1f MB", len(report.files), report.bytes / MB)
    return report


def _mark(db: AuditDB, item: Prunable, now: datetime) -> bool:
    """Mark the row pruned and audit it, in one transaction; False when it is already marked."""
    with db.session() as s:
        row: InstanceRecord | OutputRecord | None
        if item.kind in ("instance", "reference"):
            row = s.get(InstanceRecord, item.row_id, with_for_update=True)
        else:
            row = s.get(OutputRecord, item.row_id, with_for_update=True)
        if row is None or row.pruned_at is not None:
            return False
        row.pruned_at = now
        s.add(
            EventRecord(
                kind="pruned",
                sop_instance_uid=item.sop_instance_uid,
                job_id=item.job_id,
                detail=f"{item.kind} file deleted, {item.bytes} bytes: {item.reason}",
            )
        )
    return True


def _marked_leftovers(db: AuditDB) -> Iterator[str]:
    with db.session() as s:
        for model in (InstanceRecord, OutputRecord):
            for path in s.scalars(select(model.path).where(model.pruned_at.is_not(None))):
                if Path(path).exists():
                    yield path


def _unlink(storage: Storage, path: str) -> None:
    p = Path(path)
    p.unlink(missing_ok=True)
    parent = p.parent
    if parent != storage.root and storage.root in parent.parents:
        with contextlib.suppress(OSError):  # not empty: other files of the study remain
            parent.rmdir()  # the study folder, once empty


def disk_status(storage: Storage, policy: RetentionPolicy, min_free_mb: float) -> dict[str, Any]:
    """Free space against the warning and refusal thresholds."""
    usage = shutil.disk_usage(storage.root)
    free_mb = usage.free / MB
    return {
        "free_mb": round(free_mb, 1),
        "total_mb": round(usage.total / MB, 1),
        "warn_below_mb": policy.warn_free_disk_mb,
        "refuse_below_mb": min_free_mb,
        "low": free_mb < policy.warn_free_disk_mb,
    }


class Pruner:
    """The background pass every ``interval_s``: prune (or, with the policy disabled, only count what it
    would prune), warn when free space runs low, keep the figures for health and metrics."""

    def __init__(self, db: AuditDB, storage: Storage, policy: RetentionPolicy, min_free_mb: float) -> None:
        self.db, self.storage, self.policy, self.min_free_mb = db, storage, policy, min_free_mb
        self.last: PruneReport | None = None
        self.prunable_bytes: int | None = None
        self.prunable_files: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="pruner", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def tick(self) -> PruneReport:
        first = self.last is None
        report = prune(self.db, self.storage, self.policy, dry_run=not self.policy.enabled, sweep=first)
        if report.dry_run:  # disabled: what the policy would delete stays on disk, and is counted
            self.prunable_files, self.prunable_bytes = len(report.files), report.bytes
        elif report.skipped is None:  # enabled: this pass deleted all it could
            self.prunable_files, self.prunable_bytes = 0, 0
        self.last = report
        disk = disk_status(self.storage, self.policy, self.min_free_mb)
        if disk["low"]:
            log.warning(
                "free disk space %.0f MB is below the warning threshold %.0f MB (refusing below %.0f MB): "
                "shorten [retention] or add disk",
                disk["free_mb"],
                self.policy.warn_free_disk_mb,
                self.min_free_mb,
            )
        return self.last

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a database hiccup: the next pass retries
                log.exception("pruning pass failed")
            self._stop.wait(self.policy.interval_s)

    def status(self) -> dict[str, Any]:
        return {
            **disk_status(self.storage, self.policy, self.min_free_mb),
            "retention": {
                "enabled": self.policy.enabled,
                "instances_days": self.policy.instances_days,
                "outputs_days": self.policy.outputs_days,
            },
            "prunable_files": self.prunable_files,
            "prunable_bytes": self.prunable_bytes,
            "last_pruned_files": len(self.last.files) if self.last and not self.last.dry_run else None,
            "last_pruned_bytes": self.last.bytes if self.last and not self.last.dry_run else None,
        }


def format_prune(report: PruneReport) -> str:
    if report.skipped:
        return f"nothing pruned: {report.skipped}"
    verb = "would delete" if report.dry_run else "deleted"
    lines = [f"{verb} {len(report.files)} files, {report.bytes / MB:.1f} MB"]
    lines += [f"  {f.kind:9} job {f.job_id or '-':>6}  {f.bytes / MB:8.2f} MB  {f.reason}" for f in report.files]
    return "\n".join(lines)


def parse_duration(text_value: str) -> float:
    """``30d``, ``12h``, ``90m``, ``2w`` (or a bare number of days) -> days."""
    units = {"w": 7.0, "d": 1.0, "h": 1 / 24, "m": 1 / 1440}
    value = text_value.strip().lower()
    unit = value[-1] if value and value[-1] in units else "d"
    number = value[:-1] if value and value[-1] in units else value
    try:
        days = float(number) * units[unit]
    except ValueError:
        raise ValueError(f"{text_value!r} is not a duration (e.g. 30d, 12h, 90m, 2w)") from None
    if days < 0:
        raise ValueError(f"{text_value!r}: a duration is not negative")
    return days

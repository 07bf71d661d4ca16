"""Leases: how several processes, on several hosts, share jobs, deliveries and reference comparisons safely.

A worker claims a job (``JobQueue.claim``: ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, the single
writer of ``BEGIN IMMEDIATE`` on SQLite) by writing its identity - host and pid - and a lease expiry into
the row. While it works, its process's ``LeaseKeeper`` thread renews the leases of everything it holds
(jobs, deliveries, reference comparisons) every third of the lease. A worker that dies (SIGKILL, power
loss, a partitioned host) stops renewing; once its lease has expired, any other process's ``LeaseKeeper``
puts the job back in the queue (``running -> queued``, "lease expired"), makes its comparison due again
(``evaluating -> due``) and releases its deliveries, and another worker takes them. A worker whose lease
was taken from it cannot record its result: ``Processor.run`` (and ``Evaluator``) commit only while the
claim is still its own (the attempt number is the fencing token), so nothing is completed twice.

At start-up a process also reclaims, without waiting, what an earlier process *on the same host* left
behind: jobs held by a pid that no longer exists (the single-box restart after a crash) or by its own pid
(a container restarted under the same pid). Leases use each host's UTC clock: keep hosts in NTP sync
(a skew well below the lease, 30 s by default).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from dicom_node.audit.records import (
    AuditDB,
    DeliveryRecord,
    DeliveryState,
    EventRecord,
    JobRecord,
    JobState,
    ReceivedSegRecord,
    ReferenceState,
    utcnow,
)
from dicom_node.queue.lifecycle import set_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerIdentity:
    """A worker process: host name and pid (``host:pid``)."""

    host: str
    pid: int

    @classmethod
    def current(cls) -> WorkerIdentity:
        return cls(socket.gethostname(), os.getpid())

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"


def lease_until(lease_s: float, now: datetime | None = None) -> datetime:
    return (now or utcnow()) + timedelta(seconds=lease_s)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _gone(pid: int, me: WorkerIdentity) -> bool:
    """Whether a process of this host with ``pid`` left its leases: it no longer exists, or it is this
    process (a container restarted under the same pid) - at start-up this process holds nothing yet."""
    return pid == me.pid or not pid_alive(pid)


def _left_by_gone_process(owner: str, me: WorkerIdentity) -> bool:
    """Whether the lease owner ``host:pid`` is a gone process of this host (see ``_gone``)."""
    host, _, pid = owner.rpartition(":")
    return host == me.host and pid.isdigit() and _gone(int(pid), me)


def renew(db: AuditDB, me: WorkerIdentity, lease_s: float) -> int:
    """Extend the leases of the jobs, deliveries and reference comparisons ``me`` holds. Returns how many rows."""
    until = lease_until(lease_s)
    with db.session() as s:
        jobs = s.execute(
            update(JobRecord)
            .where(JobRecord.state == JobState.RUNNING)
            .where(JobRecord.worker_host == me.host, JobRecord.worker_pid == me.pid)
            .values(lease_expires_at=until)
        ).rowcount  # type: ignore[attr-defined]  # an UPDATE's CursorResult
        deliveries = s.execute(
            update(DeliveryRecord)
            .where(DeliveryRecord.state == DeliveryState.PENDING, DeliveryRecord.lease_owner == str(me))
            .values(lease_expires_at=until)
        ).rowcount  # type: ignore[attr-defined]  # an UPDATE's CursorResult
        references = s.execute(
            update(ReceivedSegRecord)
            .where(ReceivedSegRecord.state == ReferenceState.EVALUATING, ReceivedSegRecord.lease_owner == str(me))
            .values(lease_expires_at=until)
        ).rowcount  # type: ignore[attr-defined]  # an UPDATE's CursorResult
    return int(jobs or 0) + int(deliveries or 0) + int(references or 0)


def _due_again(s: Session, refs: list[ReceivedSegRecord], me: WorkerIdentity, detail: str) -> None:
    for ref in refs:
        why = f"{detail} (held by {ref.lease_owner or 'an earlier process'})"
        ref.state, ref.lease_owner, ref.lease_expires_at = ReferenceState.DUE, None, None
        s.add(EventRecord(kind="recovered", detail=f"reference comparison {ref.id} due again: {why}"))
        log.warning("reference comparison %d: %s, due again (by %s)", ref.id, why, me)


def _requeue(s: Session, jobs: list[JobRecord], me: WorkerIdentity, detail: str) -> None:
    for job in jobs:
        held_by = f"{job.worker_host}:{job.worker_pid}" if job.worker_host else "an earlier process"
        why = f"{detail} (held by {held_by})"
        set_state(s, job, JobState.QUEUED, why, str(me))
        s.add(EventRecord(kind="recovered", job_id=job.id, detail=f"job re-queued: {why}"))


def reclaim_expired(db: AuditDB, me: WorkerIdentity, now: datetime | None = None) -> int:
    """Queue again the running jobs whose lease has expired and release expired delivery leases.
    Returns how many jobs. Rows another transaction has locked (being finished) are skipped."""
    now = now or utcnow()
    with db.session() as s:
        expired = list(
            s.scalars(
                select(JobRecord)
                .where(JobRecord.state == JobState.RUNNING, JobRecord.lease_expires_at < now)
                .with_for_update(skip_locked=True)
            )
        )
        _requeue(s, expired, me, "lease expired")
        refs = list(
            s.scalars(
                select(ReceivedSegRecord)
                .where(ReceivedSegRecord.state == ReferenceState.EVALUATING, ReceivedSegRecord.lease_expires_at < now)
                .with_for_update(skip_locked=True)
            )
        )
        _due_again(s, refs, me, "lease expired")
        s.execute(
            update(DeliveryRecord)
            .where(DeliveryRecord.state == DeliveryState.PENDING)
            .where(DeliveryRecord.lease_owner.is_not(None), DeliveryRecord.lease_expires_at < now)
            .values(lease_owner=None, lease_expires_at=None)
        )
    for job in expired:
        log.warning("job %d: lease of %s:%s expired, queued again", job.id, job.worker_host, job.worker_pid)
    return len(expired)


def reclaim_at_start(db: AuditDB, me: WorkerIdentity) -> int:
    """At start-up: queue again the jobs left running by a dead process of this host (or by no known
    process: rows from before leases, or ``received`` ones), and release that process's deliveries;
    expired leases of any host too. Returns how many jobs."""
    with db.session() as s:
        candidates = list(
            s.scalars(
                select(JobRecord)
                .where(
                    or_(
                        JobRecord.state == JobState.RECEIVED,
                        (JobRecord.state == JobState.RUNNING)
                        & or_(JobRecord.worker_host.is_(None), JobRecord.worker_host == me.host),
                    )
                )
                .with_for_update(skip_locked=True)
            )
        )
        dead = [
            j for j in candidates if j.state == JobState.RECEIVED or j.worker_pid is None or _gone(j.worker_pid, me)
        ]
        _requeue(s, dead, me, "recovered at start-up")
        evaluating = select(ReceivedSegRecord).where(ReceivedSegRecord.state == ReferenceState.EVALUATING)
        left = [
            r
            for r in s.scalars(evaluating.with_for_update(skip_locked=True))
            if r.lease_owner is None or _left_by_gone_process(r.lease_owner, me)
        ]
        _due_again(s, left, me, "recovered at start-up")
        held = select(DeliveryRecord.lease_owner).where(
            DeliveryRecord.state == DeliveryState.PENDING, DeliveryRecord.lease_owner.is_not(None)
        )
        owners = {owner for owner in set(s.scalars(held)) if owner and _left_by_gone_process(owner, me)}
        if owners:
            s.execute(
                update(DeliveryRecord)
                .where(DeliveryRecord.state == DeliveryState.PENDING, DeliveryRecord.lease_owner.in_(owners))
                .values(lease_owner=None, lease_expires_at=None)
            )
    return len(dead) + reclaim_expired(db, me)


class LeaseKeeper:
    """A thread renewing this process's leases and reclaiming expired ones, every third of the lease."""

    def __init__(
        self, db: AuditDB, me: WorkerIdentity, lease_s: float, on_reclaim: Callable[[], None] | None = None
    ) -> None:
        self.db, self.me, self.lease_s = db, me, lease_s
        self.on_reclaim = on_reclaim  # called (no arguments) when jobs were queued again
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def interval_s(self) -> float:
        return max(self.lease_s / 3, 0.2)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="lease-keeper", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def tick(self) -> int:
        """One renewal and one reclaim pass. Returns how many jobs were queued again."""
        renew(self.db, self.me, self.lease_s)
        n = reclaim_expired(self.db, self.me)
        if n and self.on_reclaim is not None:
            self.on_reclaim()
        return n

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception:  # a database hiccup: the next tick retries (leases are 3 ticks long)
                log.exception("lease renewal failed")


__all__ = [
    "LeaseKeeper",
    "WorkerIdentity",
    "lease_until",
    "pid_alive",
    "reclaim_at_start",
    "reclaim_expired",
    "renew",
]

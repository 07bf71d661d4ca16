"""The job queue, kept in the audit database: received -> queued -> running -> done | failed.

Jobs survive restarts: at start-up a job left ``running`` by a dead process of this host (the node
stopped mid-job) or ``received`` is queued again; with several worker processes a job is held under a
lease (``dicom_node.queue.leases``) and taken back only when that lease expires. Claiming is one short
transaction - ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite - so two
workers never take the same job; a condition variable wakes idle workers when the receiver enqueues.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import select

from dicom_node.audit.records import AuditDB, JobRecord, JobState
from dicom_node.config import LEASE_S
from dicom_node.queue.leases import WorkerIdentity, lease_until, reclaim_at_start
from dicom_node.queue.lifecycle import set_state


class JobQueue:
    def __init__(self, db: AuditDB, identity: WorkerIdentity | None = None, lease_s: float = LEASE_S) -> None:
        self.db = db
        self.identity = identity or WorkerIdentity.current()
        self.lease_s = lease_s
        self._wake = threading.Condition()

    def notify(self, _job_id: int | None = None) -> None:
        with self._wake:
            self._wake.notify_all()

    def wait(self, timeout: float) -> None:
        with self._wake:
            self._wake.wait(timeout)

    def recover(self) -> int:
        """Queue again the jobs an earlier process left: ``received`` ones, ``running`` ones of a dead
        process of this host (or of none recorded), and any whose lease expired. Never a live worker's
        job (another process's, on this host or another). Returns how many."""
        return reclaim_at_start(self.db, self.identity)

    def claim(self) -> tuple[int, int] | None:
        """Take the oldest queued job: mark it running under this worker's lease and return its id and
        attempt number - the fencing token to hand to ``finish`` and ``Processor.run`` - or None when the
        queue is empty. Rows other workers are claiming are skipped, not waited for."""
        me = self.identity
        with self.db.session() as s:
            job = s.scalar(
                select(JobRecord)
                .where(JobRecord.state == JobState.QUEUED)
                .order_by(JobRecord.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if job is None:
                return None
            job.attempts += 1
            job.worker_host, job.worker_pid = me.host, me.pid
            job.lease_expires_at = lease_until(self.lease_s)
            set_state(s, job, JobState.RUNNING, f"attempt {job.attempts}", str(me))
            return job.id, job.attempts

    def holds(self, job: JobRecord, attempt: int | None = None) -> bool:
        """Whether ``job`` (read with a row lock) is still running under this worker's
        claim - and, given ``attempt``, the same claim: a job reclaimed after an expired lease is not."""
        me = self.identity
        return (
            job.state == JobState.RUNNING
            and (job.worker_host, job.worker_pid) == (me.host, me.pid)
            and (attempt is None or job.attempts == attempt)
        )

    def finish(self, job_id: int, attempt: int, state: JobState, detail: str | None = None, **fields: Any) -> bool:
        """Record the end of the job this worker claimed as ``attempt``. Returns False (and changes
        nothing) when it is no longer that claim (its lease expired and another worker - or another
        thread of this process, which shares the identity - took it)."""
        with self.db.session() as s:
            job = s.get(JobRecord, job_id, with_for_update=True)
            assert job is not None
            if not self.holds(job, attempt):
                return False
            for key, value in fields.items():
                setattr(job, key, value)
            set_state(s, job, state, detail, str(self.identity))
            return True

"""The job queue, kept in the audit database: received -> queued -> running -> done | failed.

Jobs survive restarts: at start-up a job found ``running`` (the node stopped mid-job) or ``received``
is queued again. Claiming is one short ``BEGIN IMMEDIATE`` transaction, so two workers never take the
same job; a condition variable wakes idle workers when the receiver enqueues.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import select

from dicom_node.audit import AuditDB, EventRecord, JobRecord, JobState, JobTransition, utcnow


class JobQueue:
    def __init__(self, db: AuditDB) -> None:
        self.db = db
        self._wake = threading.Condition()

    def notify(self, _job_id: int | None = None) -> None:
        with self._wake:
            self._wake.notify_all()

    def wait(self, timeout: float) -> None:
        with self._wake:
            self._wake.wait(timeout)

    def recover(self) -> int:
        """Queue again every job left running or received by an earlier process. Returns how many."""
        with self.db.session() as s:
            stale = list(s.scalars(select(JobRecord).where(JobRecord.state.in_((JobState.RUNNING, JobState.RECEIVED)))))
            for job in stale:
                job.state = JobState.QUEUED
                s.add(JobTransition(job_id=job.id, state=JobState.QUEUED, detail="recovered at start-up"))
                s.add(EventRecord(kind="recovered", job_id=job.id, detail="job re-queued after restart"))
            return len(stale)

    def claim(self) -> int | None:
        """Take the oldest queued job: mark it running and return its id (None when the queue is empty)."""
        with self.db.session() as s:
            job = s.scalar(select(JobRecord).where(JobRecord.state == JobState.QUEUED).order_by(JobRecord.id).limit(1))
            if job is None:
                return None
            job.state = JobState.RUNNING
            job.attempts += 1
            job.started_at = utcnow()
            s.add(JobTransition(job_id=job.id, state=JobState.RUNNING))
            return job.id

    def finish(self, job_id: int, state: JobState, detail: str | None = None, **fields: Any) -> None:
        with self.db.session() as s:
            job = s.get(JobRecord, job_id)
            assert job is not None
            job.state = state
            job.finished_at = utcnow()
            for key, value in fields.items():
                setattr(job, key, value)
            s.add(JobTransition(job_id=job_id, state=state, detail=detail))

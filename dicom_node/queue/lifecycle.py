"""A job's life, and the one function through which every change of a job's state goes.

received -> queued -> running -> done | failed; running -> queued (its lease expired, or its process
died); failed -> queued (the instance was sent again); received -> queued (recovered at start-up).
``set_state`` checks the change against that graph, stamps the row's times and lease, and appends the
``job_transitions`` audit row in the caller's transaction, so a state and its audit record commit
together. Claiming (``queue.jobs``) and reclaiming (``queue.leases``) decide *which* job changes; this
module decides *how*.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from dicom_node.audit.records import JobRecord, JobState, JobTransition, utcnow

ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.RECEIVED: frozenset({JobState.QUEUED}),
    JobState.QUEUED: frozenset({JobState.RUNNING}),
    JobState.RUNNING: frozenset({JobState.DONE, JobState.FAILED, JobState.QUEUED}),
    JobState.FAILED: frozenset({JobState.QUEUED}),
    JobState.DONE: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A change the job graph does not have: a bug in the caller, never an input problem."""


def create(s: Session, **fields: Any) -> JobRecord:
    """A new job for a received instance, recorded as received and queued (one transaction, the caller's)."""
    job = JobRecord(state=JobState.RECEIVED, **fields)
    s.add(job)
    s.flush()
    s.add(JobTransition(job_id=job.id, state=JobState.RECEIVED))
    set_state(s, job, JobState.QUEUED)
    return job


def set_state(
    s: Session, job: JobRecord, state: JobState, detail: str | None = None, worker: str | None = None
) -> None:
    """Move ``job`` to ``state`` and audit it; the row must have been read in ``s`` (locked where it matters)."""
    if state not in ALLOWED[JobState(job.state)]:
        raise IllegalTransition(f"job {job.id}: {job.state} -> {state} is not a transition of a job")
    now = utcnow()
    job.state = state
    if state == JobState.RUNNING:
        job.started_at = now
    elif state in (JobState.DONE, JobState.FAILED):
        job.finished_at = now
        job.lease_expires_at = None
    elif state == JobState.QUEUED:
        job.lease_expires_at = None
    s.add(JobTransition(job_id=job.id, state=state, detail=detail, worker=worker, at=now))

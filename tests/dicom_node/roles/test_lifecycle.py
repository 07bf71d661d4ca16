"""The job lifecycle: every change through ``set_state``, checked against the graph and audited with it."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_node.audit.records import AuditDB, InstanceRecord, JobRecord, JobState, JobTransition
from dicom_node.queue.jobs import JobQueue
from dicom_node.queue.lifecycle import ALLOWED, IllegalTransition, create, set_state


def _job(db: AuditDB) -> int:
    with db.session() as s:
        inst = InstanceRecord(
            sop_instance_uid="1.2.3.4",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
            study_instance_uid="1.2.3",
            series_instance_uid="1.2.3.5",
            transfer_syntax="1.2.840.10008.1.2.1",
            size_bytes=10,
            path="x.dcm",
        )
        s.add(inst)
        s.flush()
        return create(s, instance_id=inst.id, model="m").id


def _trail(db: AuditDB, job_id: int) -> list[str]:
    with db.session() as s:
        rows = s.scalars(select(JobTransition).where(JobTransition.job_id == job_id).order_by(JobTransition.id))
        return [str(r.state) for r in rows]


def test_a_job_runs_through_the_graph_and_every_step_is_audited(tmp_path: Path) -> None:
    db = AuditDB(tmp_path / "a.db")
    job_id = _job(db)
    queue = JobQueue(db)
    claimed = queue.claim()
    assert claimed == (job_id, 1)
    assert queue.finish(job_id, 1, JobState.FAILED, "no pixels", error="no pixels")
    with db.session() as s:
        job = s.get(JobRecord, job_id)
        assert job is not None and job.state == JobState.FAILED and job.finished_at is not None
        assert job.lease_expires_at is None and job.error == "no pixels"
        set_state(s, job, JobState.QUEUED, "re-sent after failure")
    assert _trail(db, job_id) == ["received", "queued", "running", "failed", "queued"]


def test_a_change_outside_the_graph_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    db = AuditDB(tmp_path / "a.db")
    job_id = _job(db)
    with db.session() as s:
        job = s.get(JobRecord, job_id)
        assert job is not None
        with pytest.raises(IllegalTransition, match="queued -> done"):
            set_state(s, job, JobState.DONE)
        s.rollback()
    with db.session() as s:
        job = s.get(JobRecord, job_id)
        assert job is not None and job.state == JobState.QUEUED
    assert _trail(db, job_id) == ["received", "queued"]


def test_done_is_final_and_every_state_has_its_exits() -> None:
    assert set(ALLOWED) == set(JobState)
    assert ALLOWED[JobState.DONE] == frozenset()
    reachable = {t for targets in ALLOWED.values() for t in targets}
    assert reachable == set(JobState) - {JobState.RECEIVED}

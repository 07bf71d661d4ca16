"""Reference comparisons under a lease: a worker SIGKILLed in the middle of a comparison loses nothing.

On SQLite and on a real PostgreSQL server: a separate process claims a due reference and is killed with
SIGKILL while it compares; the reference stays ``evaluating`` under the dead process's lease until a
start-up on the same host (or, from another host, the lease's expiry) makes it due again; the dead claim
can no longer record anything; another worker then compares it, and the evaluation SR and the comparisons
are recorded once.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import func, select, update

from dicom_node.audit.records import (
    AuditDB,
    ComparisonRecord,
    InstanceRecord,
    JobRecord,
    JobState,
    OutputKind,
    OutputRecord,
    ReceivedSegRecord,
    ReferenceState,
    utcnow,
)
from dicom_node.queue.leases import WorkerIdentity, reclaim_at_start, reclaim_expired, renew
from dicom_node.reference.evaluation import Evaluator, RefClaim
from dicom_node.storage import Storage, dataset_bytes
from tests.conftest import PROJECT

pytestmark = pytest.mark.slow  # a throwaway PostgreSQL cluster and a worker process

CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import dicom_node.reference.evaluation as evaluation
    from dicom_node.audit.records import AuditDB
    from dicom_node.storage import Storage

    def comparing(*args):
        print("comparing", flush=True)
        time.sleep(600)  # killed here

    evaluation.compare = comparing
    evaluator = evaluation.Evaluator(AuditDB(sys.argv[1]), Storage(Path(sys.argv[2])), lease_s=30)
    claim = evaluator.claim()
    assert claim is not None
    print("claimed", claim.ref_id, claim.attempt, flush=True)
    evaluator.run(claim)
    """
)


@dataclass
class Due:
    ref_id: int
    job_id: int


def _instance(path: Path) -> InstanceRecord:
    ds = dcmread(path, stop_before_pixels=True)
    return InstanceRecord(
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
        size_bytes=path.stat().st_size,
        path=str(path),
    )


def a_due_reference(db: AuditDB, folder: Path) -> Due:
    """A finished job with our SEG (a real one, from the writers) and a reader's SEG of its source, due."""
    from dicom_node.writers import build_outputs
    from inference.data.phantom import make_phantom
    from inference.data.phantom_dicom import phantom_to_dataset
    from tests.dicom_node.outputs import PHANTOM_HEIGHT, fake_prediction, make_card, reference_seg

    seed = 910001
    phantom = make_phantom(seed, height=PHANTOM_HEIGHT)
    source = phantom_to_dataset(phantom)
    source_path = folder / "source.dcm"
    source.save_as(source_path, enforce_file_format=True)
    card = make_card(demo=False)
    seg = build_outputs(source, fake_prediction(phantom, card, None), card, display_image=phantom.display_image()).seg
    assert seg is not None
    seg_path = folder / "ours.dcm"
    seg_path.write_bytes(dataset_bytes(seg))
    reference_path = reference_seg(source_path, seed, folder)
    with db.session() as s:
        src, ref = _instance(source_path), _instance(reference_path)
        s.add_all([src, ref])
        s.flush()
        job = JobRecord(instance_id=src.id, state=JobState.DONE, model=card.name, model_version=card.version)
        s.add(job)
        s.flush()
        s.add(
            OutputRecord(
                job_id=job.id,
                kind=OutputKind.SEG,
                sop_class_uid=str(seg.SOPClassUID),
                sop_instance_uid=str(seg.SOPInstanceUID),
                series_instance_uid=str(seg.SeriesInstanceUID),
                path=str(seg_path),
            )
        )
        row = ReceivedSegRecord(instance_id=ref.id, source_sop_uid=src.sop_instance_uid, state=ReferenceState.DUE)
        s.add(row)
        s.flush()
        return Due(row.id, job.id)


def _row(db: AuditDB, ref_id: int) -> ReceivedSegRecord:
    with db.session() as s:
        row = s.get(ReceivedSegRecord, ref_id)
        assert row is not None
        s.expunge(row)
        return row


def kill_mid_comparison(db: AuditDB, data: Path) -> WorkerIdentity:
    """A worker process that claims the reference and is SIGKILLed while it compares. Returns who it was."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, db.url, str(data)], cwd=PROJECT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline().strip() for _ in range(2)]
    assert lines[0].startswith("claimed ") and lines[1] == "comparing", lines
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    return WorkerIdentity(WorkerIdentity.current().host, proc.pid)


def _finish_elsewhere(db: AuditDB, data: Path, due: Due) -> None:
    evaluator = Evaluator(db, Storage(data), lease_s=30)
    claim = evaluator.claim()
    assert claim is not None and claim.ref_id == due.ref_id and claim.attempt == 2
    evaluator.run(claim)
    row = _row(db, due.ref_id)
    assert row.state == ReferenceState.EVALUATED and row.job_id == due.job_id
    assert row.lease_owner is None and row.lease_expires_at is None
    with db.session() as s:
        compared = s.scalar(select(func.count()).select_from(ComparisonRecord))
        sr = s.scalars(select(OutputRecord).where(OutputRecord.kind == OutputKind.EVAL_SR)).all()
    assert compared == 2 and len(sr) == 1  # Spine and T1, one evaluation SR
    assert Path(sr[0].path).is_file()


def test_a_comparison_killed_midway_is_due_again_at_start_up(db: AuditDB, tmp_path: Path) -> None:
    due = a_due_reference(db, tmp_path)
    dead = kill_mid_comparison(db, tmp_path / "data")
    row = _row(db, due.ref_id)
    assert row.state == ReferenceState.EVALUATING and row.lease_owner == str(dead) and row.attempts == 1
    assert reclaim_expired(db, WorkerIdentity("other-host", 1)) == 0 and _row(db, due.ref_id).state == (
        ReferenceState.EVALUATING
    )  # its lease has not expired: from another host it may still be alive
    reclaim_at_start(db, WorkerIdentity.current())  # a start on the same host: that pid is gone
    assert _row(db, due.ref_id).state == ReferenceState.DUE
    stale = Evaluator(db, Storage(tmp_path / "data"), identity=dead)
    stale.fail(RefClaim(due.ref_id, 1), "a late write of the dead claim")  # fenced off: changes nothing
    assert _row(db, due.ref_id).state == ReferenceState.DUE
    _finish_elsewhere(db, tmp_path / "data", due)


def test_a_comparison_whose_worker_vanished_is_taken_back_when_its_lease_expires(db: AuditDB, tmp_path: Path) -> None:
    due = a_due_reference(db, tmp_path)
    kill_mid_comparison(db, tmp_path / "data")
    other = WorkerIdentity("other-host", 4242)
    with db.session() as s:  # as seen from another host, whose worker cannot look at local pids
        s.execute(
            update(ReceivedSegRecord)
            .where(ReceivedSegRecord.id == due.ref_id)
            .values(lease_owner="gone-host:77", lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    assert renew(db, other, 30) == 0  # not its lease to renew
    reclaim_expired(db, other)
    assert _row(db, due.ref_id).state == ReferenceState.DUE
    _finish_elsewhere(db, tmp_path / "data", due)


def test_a_live_comparison_keeps_its_lease(db: AuditDB, tmp_path: Path) -> None:
    due = a_due_reference(db, tmp_path)
    me = WorkerIdentity.current()
    evaluator = Evaluator(db, Storage(tmp_path / "data"), identity=me, lease_s=30)
    claim = evaluator.claim()
    assert claim is not None
    with db.session() as s:
        s.execute(
            update(ReceivedSegRecord)
            .where(ReceivedSegRecord.id == due.ref_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    assert renew(db, me, 30) == 1  # the heartbeat came in time
    assert reclaim_expired(db, WorkerIdentity("other-host", 1)) == 0
    assert _row(db, due.ref_id).state == ReferenceState.EVALUATING
    evaluator.run(claim)
    assert _row(db, due.ref_id).state == ReferenceState.EVALUATED

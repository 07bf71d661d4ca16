"""Storage Commitment: a destination that requires it counts a delivery only once it committed.

For real: a modality (dcmtk storescu) sends a phantom DX to the node, the node stores its results into
Orthanc, asks Orthanc to commit them (N-ACTION) and Orthanc answers on a new association to the node's
SCP (N-EVENT-REPORT), as a PACS does; only then are the deliveries ``delivered``, and only then may
retention delete the files. The report's failure branch and the timeout are exercised on the database
(SQLite and PostgreSQL) with reports built as a peer sends them.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from dicom_node.audit.records import (
    AssociationRecord,
    AuditDB,
    DeliveryAttempt,
    DeliveryRecord,
    DeliveryState,
    InstanceRecord,
    JobRecord,
    JobState,
    OutputKind,
    OutputRecord,
    utcnow,
)
from dicom_node.config import ConfigError, Destination, NodeConfig, load_config
from dicom_node.delivery.commitment import EVENT_SOME_FAILED, Committer, Report, record_report, request_dataset
from dicom_node.queue.leases import WorkerIdentity
from dicom_node.retention.prune import prunable
from dicom_node.roles.node import Node
from tests.conftest import TINY_MODEL, free_port, require_tool, session_models, storescu, wait_until
from tests.orthanc import ORTHANC_AE, Modality, OrthancServer

NODE_AE = "SPINENODE"
LOOPBACK = "127.0.0.1"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.mark.slow
def test_storage_commitment_round_trips_with_orthanc(tmp_path: Path, phantom_files: list[Path]) -> None:
    require_tool("storescu")
    node_port, orthanc_port = free_port(), free_port()
    orthanc = OrthancServer(
        tmp_path / "orthanc", modalities={"spinenode": Modality(NODE_AE, LOOPBACK, node_port)}, dicom_port=orthanc_port
    ).start()
    dest = Destination(ORTHANC_AE, LOOPBACK, orthanc_port)
    config = NodeConfig(
        ae_title=NODE_AE,
        data_dir=tmp_path / "var",
        port=node_port,
        bind=LOOPBACK,
        model=TINY_MODEL,
        destinations=(dest,),
        commitment_destinations=(str(dest),),
        commitment_timeout_s=60.0,
        retry_initial_s=0.5,
        retry_max_s=2.0,
    )
    node = Node.compose(config, session_models())
    try:
        node.start()
        storescu(node.port, phantom_files[0], check=True)

        def deliveries() -> list[DeliveryRecord]:
            with node.db.session() as s:
                return list(s.scalars(select(DeliveryRecord)))

        wait_until(
            lambda: len(deliveries()) == 3 and all(d.state == DeliveryState.DELIVERED for d in deliveries()),
            timeout=120,
            what="three deliveries committed by Orthanc",
        )
        with node.db.session() as s:
            for d in s.scalars(select(DeliveryRecord)):
                assert d.committed_at is not None and d.commit_uid and d.commit_attempts == 1
                notes = [a.error or "" for a in d.attempt_log]
                assert any("storage commitment requested" in n for n in notes), notes
                assert any(n.startswith("committed") for n in notes), notes
            outputs = list(s.scalars(select(OutputRecord)))
            callers = set(s.scalars(select(AssociationRecord.calling_ae)))
        assert ORTHANC_AE in callers  # the report came on Orthanc's own association to the node's SCP
        stored = {i["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.get("/instances?expand")}
        assert {o.sop_instance_uid for o in outputs} <= stored  # what was committed is in Orthanc
    finally:
        node.stop()
        assert orthanc.stop() == 0, orthanc.log_tail()


# --- the report and the timeout, on the database ---------------------------------------------------
@pytest.fixture
def committing(db: AuditDB) -> tuple[AuditDB, list[int]]:
    """Two SR outputs of one done job, stored to a destination and awaiting commitment (transaction T)."""
    with db.session() as s:
        inst = InstanceRecord(
            sop_instance_uid="1.2.3.1",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
            study_instance_uid="1.2.3",
            series_instance_uid="1.2.3.0",
            path="in.dcm",
            modality="DX",
            transfer_syntax="1.2.840.10008.1.2.1",
            size_bytes=10,
        )
        s.add(inst)
        s.flush()
        job = JobRecord(instance_id=inst.id, model=TINY_MODEL, state=JobState.DONE)
        s.add(job)
        s.flush()
        ids = []
        for k in (1, 2):
            out = OutputRecord(
                job_id=job.id,
                kind=OutputKind.EVAL_SR,
                sop_class_uid=SR_CLASS,
                sop_instance_uid=f"1.2.3.9.{k}",
                series_instance_uid="1.2.3.9",
                path=f"out{k}.dcm",
            )
            s.add(out)
            s.flush()
            d = DeliveryRecord(
                output_id=out.id,
                destination="PACS@127.0.0.1:4242",
                state=DeliveryState.COMMITTING,
                attempts=1,
                commit_uid="2.25.1",
                commit_requested_at=utcnow(),
                commit_attempts=1,
            )
            s.add(d)
            s.flush()
            ids.append(d.id)
    return db, ids


def _states(db: AuditDB, ids: list[int]) -> list[DeliveryRecord]:
    with db.session() as s:
        return [s.get_one(DeliveryRecord, i) for i in ids]


def test_a_report_commits_some_and_sends_the_failed_again(committing: tuple[AuditDB, list[int]]) -> None:
    db, (ok, bad) = committing
    ds = request_dataset("2.25.1", [(SR_CLASS, "1.2.3.9.1")])  # the same layout as the report's success list
    failed = Dataset()
    failed.ReferencedSOPClassUID, failed.ReferencedSOPInstanceUID, failed.FailureReason = SR_CLASS, "1.2.3.9.2", 0x0112
    ds.FailedSOPSequence = [failed]
    report = Report.from_dataset(ds)
    assert report.committed == {"1.2.3.9.1"} and report.failed == {"1.2.3.9.2": 0x0112}
    assert EVENT_SOME_FAILED == 2
    assert record_report(db, report, 1.0, 4.0, max_attempts=5) == 2
    committed, again = _states(db, [ok, bad])
    assert committed.state == DeliveryState.DELIVERED and committed.committed_at is not None
    assert again.state == DeliveryState.PENDING and again.commit_uid is None  # stored again, then asked again
    assert "reason 0x0112" in (again.last_error or "")
    assert record_report(db, report, 1.0, 4.0, max_attempts=5) == 0  # a repeated report changes nothing
    with db.session() as s:
        kinds = [a.error for a in s.scalars(select(DeliveryAttempt).where(DeliveryAttempt.delivery_id == bad))]
    assert any("storage commitment failed" in (k or "") for k in kinds)


def test_a_request_without_report_fails_after_the_last_attempt(committing: tuple[AuditDB, list[int]]) -> None:
    db, ids = committing
    config = NodeConfig(commitment_destinations=("PACS@127.0.0.1:4242",), commitment_timeout_s=30, retry_max_attempts=1)
    with db.session() as s:
        for i in ids:
            s.get_one(DeliveryRecord, i).commit_requested_at = utcnow() - timedelta(seconds=31)
    assert prunable(db, config.retention, utcnow() + timedelta(days=365)) == []  # nothing while committing
    Committer(config, db, WorkerIdentity.current()).run_once()
    for d in _states(db, ids):
        assert d.state == DeliveryState.FAILED and "no storage commitment report within 30 s" in (d.last_error or "")


def test_commitment_settings_are_checked(tmp_path: Path) -> None:
    toml = tmp_path / "node.toml"
    toml.write_text('[commitment]\ndestinations = ["PACS@10.0.0.5:104"]\ntimeout_s = 120\n')
    cfg = load_config(toml)
    assert cfg.commitment_destinations == ("PACS@10.0.0.5:104",) and cfg.commitment_timeout_s == 120.0
    toml.write_text("[commitment]\ntimeout_s = 0\n")
    with pytest.raises(ConfigError, match="timeout_s"):
        load_config(toml)
    toml.write_text('[commitment]\nwait = "forever"\n')
    with pytest.raises(ConfigError, match="wait"):
        load_config(toml)

"""The C-STORE intake path (validate, persist, record, enqueue) on a real SQLite file, without sockets."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite
from pynetdicom.status import (
    STATUS_FAILURE,
    STATUS_SUCCESS,
    STATUS_WARNING,
    STORAGE_SERVICE_CLASS_STATUS,
    code_to_category,
)
from sqlalchemy import select

from dicom_node.audit.records import AuditDB, InstanceRecord, JobRecord, JobState
from dicom_node.config import DEFAULT_MODEL, NodeConfig
from dicom_node.dimse.scp import Receiver, Refusal
from dicom_node.dimse.status import PROCESSING_FAILURE, WARNING_STATUSES, StoreStatus, is_delivered
from dicom_node.storage import Storage

DX = "1.2.840.10008.5.1.4.1.1.1.1"


def encoded(ds) -> bytes:  # type: ignore[no-untyped-def]
    buf = DicomBytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture
def receiver(tmp_path: Path) -> Receiver:
    cfg = NodeConfig(data_dir=tmp_path / "var", max_backlog=3)
    db = AuditDB(cfg.db_path)
    queued: list[int] = []
    r = Receiver(cfg, db, Storage(cfg.data_dir), on_job=queued.append)
    r.queued = queued  # type: ignore[attr-defined]
    return r


def jobs(r: Receiver) -> list[JobRecord]:
    with r.db.session() as s:
        return list(s.scalars(select(JobRecord)))


def test_accepted_instance_is_on_disk_and_queued(receiver: Receiver, phantom_files: list[Path]) -> None:
    ds = dcmread(phantom_files[0])
    result = receiver.receive(ds, encoded(ds), DX, "SPINENODE", "SCU")
    assert result.status is StoreStatus.SUCCESS and result.job_id is not None
    assert receiver.queued == [result.job_id]  # type: ignore[attr-defined]
    with receiver.db.session() as s:
        inst = s.scalar(select(InstanceRecord))
        assert inst is not None and inst.sop_instance_uid == ds.SOPInstanceUID
        assert dcmread(inst.path).SOPInstanceUID == ds.SOPInstanceUID
        assert oct(Path(inst.path).stat().st_mode & 0o777) == "0o600"
    [job] = jobs(receiver)
    assert job.state == JobState.QUEUED and job.model == DEFAULT_MODEL


def test_resent_instance_makes_no_second_job(receiver: Receiver, phantom_files: list[Path]) -> None:
    ds = dcmread(phantom_files[0])
    receiver.receive(ds, encoded(ds), DX, "SPINENODE", "SCU")
    again = receiver.receive(ds, encoded(ds), DX, "SPINENODE", "SCU")
    assert again.status is StoreStatus.SUCCESS and again.duplicate and again.job_id is None
    assert len(jobs(receiver)) == 1
    assert [e.kind for e in receiver.db.events("duplicate")] == ["duplicate"]


@pytest.mark.parametrize(
    ("mutate", "status", "comment"),
    [
        (lambda ds: delattr(ds, "StudyInstanceUID"), StoreStatus.CANNOT_UNDERSTAND, "StudyInstanceUID"),
        (lambda ds: setattr(ds, "SOPInstanceUID", "1.2.abc"), StoreStatus.CANNOT_UNDERSTAND, "SOPInstanceUID"),
        (lambda ds: delattr(ds, "PixelData"), StoreStatus.CANNOT_UNDERSTAND, "no pixel data"),
        (
            lambda ds: (setattr(ds, "Rows", 30000), setattr(ds, "Columns", 30000)),
            StoreStatus.CANNOT_UNDERSTAND,
            "too large",
        ),
        (lambda ds: setattr(ds, "PixelData", ds.PixelData[:100]), StoreStatus.CANNOT_UNDERSTAND, "unusable image"),
        (
            lambda ds: setattr(ds, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.2"),
            StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "does not match",
        ),
    ],
    ids=["no-study-uid", "bad-uid", "no-pixels", "huge", "truncated-pixels", "wrong-class"],
)
def test_unusable_input_is_refused_with_reason(
    receiver: Receiver,
    phantom_files: list[Path],
    mutate,
    status: StoreStatus,
    comment: str,  # type: ignore[no-untyped-def]
) -> None:
    ds = copy.deepcopy(dcmread(phantom_files[1]))
    mutate(ds)
    with pytest.raises(Refusal) as info:
        receiver.receive(ds, b"", DX, "SPINENODE", "SCU")
    assert info.value.status is status
    assert comment in info.value.detail
    assert len(info.value.comment) <= 64
    assert jobs(receiver) == []


def test_backlog_full_answers_out_of_resources(receiver: Receiver, phantom_files: list[Path]) -> None:
    for path in phantom_files:  # max_backlog=3: three jobs fill it
        ds = dcmread(path)
        receiver.receive(ds, encoded(ds), DX, "SPINENODE", "SCU")
    ds = dcmread(phantom_files[0])
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".1"
    with pytest.raises(Refusal) as info:
        receiver.receive(ds, encoded(ds), DX, "SPINENODE", "SCU")
    assert info.value.status is StoreStatus.OUT_OF_RESOURCES and "backlog" in info.value.detail


def test_storage_failure_answers_out_of_resources(receiver: Receiver, phantom_files: list[Path]) -> None:
    blocker = receiver.storage.root / "instances" / "blocked"
    blocker.write_text("a file where a folder should be")
    receiver.storage.instance_path = lambda study, sop: blocker / "x.dcm"  # type: ignore[method-assign]
    ds = dcmread(phantom_files[0])
    with pytest.raises(Refusal) as info:
        receiver.receive(ds, encoded(ds), DX, "SPINENODE", "SCU")
    assert info.value.status is StoreStatus.OUT_OF_RESOURCES
    assert jobs(receiver) == []


def test_shutdown_stops_intake(receiver: Receiver, phantom_files: list[Path]) -> None:
    receiver.accepting = False
    ds = dcmread(phantom_files[0])
    with pytest.raises(Refusal) as info:
        receiver.receive(ds, encoded(ds), DX, "SPINENODE", "SCU")
    assert info.value.status is StoreStatus.OUT_OF_RESOURCES


def test_status_values_fall_in_the_standards_categories() -> None:
    """Each status the node answers is a storage status of the category its name says (pynetdicom's
    table of PS3.4 B.2.3), and only Success and the storage warnings count as delivered."""
    for status in StoreStatus:
        expected = STATUS_SUCCESS if status is StoreStatus.SUCCESS else STATUS_FAILURE
        assert code_to_category(int(status)) == expected, status.name
        assert int(status) in STORAGE_SERVICE_CLASS_STATUS or status is StoreStatus.SUCCESS, status.name
    assert {0xB000, 0xB006, 0xB007} <= WARNING_STATUSES  # and the general warnings pynetdicom lists for storage
    assert all(code_to_category(s) == STATUS_WARNING for s in WARNING_STATUSES)
    assert all(is_delivered(s) for s in (0x0000, 0xB000, 0xB006, 0xB007))
    assert not any(is_delivered(int(s)) for s in StoreStatus if s is not StoreStatus.SUCCESS)
    assert code_to_category(PROCESSING_FAILURE) == STATUS_FAILURE and PROCESSING_FAILURE != StoreStatus.UNEXPECTED_ERROR


def test_audit_db_uses_wal(receiver: Receiver) -> None:
    with receiver.db.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"

"""The ``instances`` rows of received objects: a new row, or the known one counted and audited again."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.audit.records import EventRecord, InstanceRecord, JobRecord


def known_instance(s: Session, ds: Dataset, assoc_id: int | None) -> InstanceRecord | None:
    """The instance already received with this SOP Instance UID (counted and audited again), or None."""
    sop_uid = str(ds.SOPInstanceUID)
    existing = s.scalar(select(InstanceRecord).where(InstanceRecord.sop_instance_uid == sop_uid))
    if existing is not None:
        existing.times_received += 1
        job_id = s.scalar(select(JobRecord.id).where(JobRecord.instance_id == existing.id))
        s.add(
            EventRecord(
                kind="duplicate",
                sop_instance_uid=sop_uid,
                association_id=assoc_id,
                job_id=job_id,
                detail="instance received again",
            )
        )
    return existing


def new_instance(s: Session, ds: Dataset, path: Path, size: int, assoc_id: int | None) -> InstanceRecord:
    """Add (and flush, so that it has its id) the row of a newly received instance stored at ``path``."""
    instance = InstanceRecord(
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
        modality=str(ds.get("Modality", "")) or None,
        size_bytes=size,
        path=str(path),
        association_id=assoc_id,
    )
    s.add(instance)
    s.flush()
    return instance


__all__ = ["known_instance", "new_instance"]

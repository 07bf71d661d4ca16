"""Received Segmentations: the node's own outputs coming back, or references to measure the model against.

A SEG received over C-STORE is stored like any instance, then recorded once per source image it
references (Referenced Series Sequence, per-frame Derivation Image Sequence, Source Image Sequence) in
``received_segs``, in one of these states:

* ``own_output`` - one of the node's own SEGs; acknowledged and kept, never compared. A SEG is ours when
  (1) its SOP Instance UID or Series Instance UID is an output in the audit database (exact: our UIDs
  are deterministic, so a re-created output has the same UIDs), or (2) its Manufacturer is SpineNode's
  (outputs of another SpineNode, or of this one before its database was reset), or (3) every segment is
  AUTOMATIC and names as its algorithm a model this node has run (our SEG re-saved by a tool that
  rewrote its UIDs and manufacturer without editing a segment). A reader's correction is MANUAL or
  SEMIAUTOMATIC (DICOM: computed with user assistance) and comes from the viewer with new UIDs, so it
  is a reference; comparing the model with its own unedited output would measure nothing.
* ``waiting`` - a reference whose source image has no finished job yet (not received, queued, running
  or failed); the job's completion makes it ``due`` (:func:`mark_due`, in the job's final transaction).
* ``due`` - the source's job is done; a worker compares it (``dicom_node.reference.evaluation``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from dicom_node.audit.instances import known_instance, new_instance
from dicom_node.audit.records import (
    InstanceRecord,
    JobRecord,
    JobState,
    OutputRecord,
    ReceivedSegRecord,
    ReferenceState,
)
from dicom_node.writers.outputs import MANUFACTURER

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
REFERENCE_SOP_CLASSES: dict[str, str] = {SEGMENTATION_STORAGE: "Segmentation Storage"}
# A SEG is encoded losslessly (PS3.3 C.8.20.2: no lossy compression of segmentation frames).
REFERENCE_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGLSLossless,
    JPEG2000Lossless,
)
AUTOMATIC = "AUTOMATIC"


class UnusableSegmentation(ValueError):
    """A SEG the node cannot use at all (no segments, no source image): refused at C-STORE."""


def referenced_sources(ds: Dataset) -> list[str]:
    """SOP Instance UIDs of the images ``ds`` is derived from, in first-seen order."""
    items: list[Dataset] = []
    for series in ds.get("ReferencedSeriesSequence", []):
        items.extend(series.get("ReferencedInstanceSequence", []))
    for frame in ds.get("PerFrameFunctionalGroupsSequence", []):
        for derivation in frame.get("DerivationImageSequence", []):
            items.extend(derivation.get("SourceImageSequence", []))
    items.extend(ds.get("SourceImageSequence", []))
    uids = (str(item.get("ReferencedSOPInstanceUID", "") or "") for item in items)
    return list(dict.fromkeys(uid for uid in uids if uid and UID(uid).is_valid))


def check_segmentation(ds: Dataset) -> list[str]:
    """The source images of a usable SEG; raises :class:`UnusableSegmentation` otherwise."""
    if not ds.get("SegmentSequence"):
        raise UnusableSegmentation("SEG without segments (Segment Sequence)")
    if "PixelData" not in ds:
        raise UnusableSegmentation("SEG without pixel data")
    sources = referenced_sources(ds)
    if not sources:
        raise UnusableSegmentation("SEG references no source image")
    return sources


def own_output_reason(s: Session, ds: Dataset) -> str | None:
    """Why ``ds`` is one of the node's own SEGs (see the module notes), or None for a reference."""
    sop_uid, series_uid = str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID)
    output = s.scalar(
        select(OutputRecord).where(
            or_(OutputRecord.sop_instance_uid == sop_uid, OutputRecord.series_instance_uid == series_uid)
        )
    )
    if output is not None:
        return f"output {output.kind.value} of job {output.job_id}"
    if str(ds.get("Manufacturer", "")).strip() == MANUFACTURER:
        return f"Manufacturer is {MANUFACTURER}"
    segments = list(ds.get("SegmentSequence", []))
    names = {str(seg.get("SegmentAlgorithmName", "")) for seg in segments}
    if segments and all(str(seg.get("SegmentAlgorithmType", "")) == AUTOMATIC for seg in segments):
        ran = set(s.scalars(select(JobRecord.model).where(JobRecord.model.in_(names)).distinct()))
        if ran and ran == names:
            return f"every segment is AUTOMATIC by a model this node runs ({', '.join(sorted(ran))})"
    return None


def _source_job_done(s: Session, source_uid: str) -> bool:
    state = s.scalar(
        select(JobRecord.state)
        .join(InstanceRecord, JobRecord.instance_id == InstanceRecord.id)
        .where(InstanceRecord.sop_instance_uid == source_uid)
    )
    return state == JobState.DONE


def register(s: Session, ds: Dataset, instance_id: int, sources: Iterable[str]) -> int:
    """Record a newly received SEG (one row per source image). Returns how many rows are due now."""
    own = own_output_reason(s, ds)
    due = 0
    for source_uid in sources:
        if own is not None:
            state = ReferenceState.OWN_OUTPUT
        elif _source_job_done(s, source_uid):
            state = ReferenceState.DUE
            due += 1
        else:
            state = ReferenceState.WAITING
        s.add(ReceivedSegRecord(instance_id=instance_id, source_sop_uid=source_uid, state=state, detail=own))
    return due


def record(
    s: Session, ds: Dataset, path: Path, size: int, assoc_id: int | None, sources: Iterable[str]
) -> tuple[int, bool]:
    """Record a received SEG stored at ``path``. Returns (rows due now, whether it was received before)."""
    existing = known_instance(s, ds, assoc_id)
    if existing is not None:
        return retry_failed(s, existing.id), True
    instance = new_instance(s, ds, path, size, assoc_id)
    return register(s, ds, instance.id, sources), False


def retry_failed(s: Session, instance_id: int) -> int:
    """A SEG received again: its failed rows are tried again. Returns how many rows are due now."""
    due = 0
    rows = s.scalars(
        select(ReceivedSegRecord).where(
            ReceivedSegRecord.instance_id == instance_id, ReceivedSegRecord.state == ReferenceState.FAILED
        )
    )
    for row in rows:
        done = _source_job_done(s, row.source_sop_uid)
        row.state = ReferenceState.DUE if done else ReferenceState.WAITING
        row.detail = None
        due += done
    return due


def mark_due(s: Session, source_uid: str) -> int:
    """The job of ``source_uid`` is done: its waiting references become due. Returns how many."""
    result = s.execute(
        update(ReceivedSegRecord)
        .where(ReceivedSegRecord.source_sop_uid == source_uid, ReceivedSegRecord.state == ReferenceState.WAITING)
        .values(state=ReferenceState.DUE)
    )
    return int(getattr(result, "rowcount", 0) or 0)


__all__ = [
    "REFERENCE_SOP_CLASSES",
    "REFERENCE_TRANSFER_SYNTAXES",
    "SEGMENTATION_STORAGE",
    "UnusableSegmentation",
    "check_segmentation",
    "mark_due",
    "own_output_reason",
    "record",
    "referenced_sources",
    "register",
    "retry_failed",
]

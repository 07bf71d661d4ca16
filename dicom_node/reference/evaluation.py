"""The model against reference segmentations: true Dice/Jaccard, an evaluation SR, and the audit record.

A worker claims a due reference (a ``received_segs`` row: due -> evaluating, under a lease renewed by
the process's ``LeaseKeeper`` like a job's; ``dicom_node.queue.leases``), reads the SEG the node
wrote for the source's job (the ``outputs`` table has its path) and the reference SEG, compares them
(``dicom_node.reference.compare``), writes the evaluation SR (``writers.evaluation_sr``) durably and then, in
one transaction, records the SR as an output of the job with a delivery to each of the job's
destinations, one ``comparisons`` row per matched segment, and the reference as evaluated. A crash in
between leaves the row evaluating: once its lease expires another worker (or, at once, the next start on
the same host) makes it due again, and the deterministic UIDs give the same SR. Every write of an outcome
is fenced: it happens only while the claim (owner and attempt) is still the worker's own. A reference
that cannot be compared (no segment we predict, masks not at the source's size) ends ``unusable`` with
the reason; an unexpected error ends ``failed`` (re-sending the SEG retries).
A reference whose matched segments name our model as their algorithm and equal our masks pixel for pixel
is our SEG re-exported without edits (OHIF marks every segment of a loaded SEG SEMIAUTOMATIC on export,
edited or not): it ends ``own_output`` instead of scoring a perfect Dice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
from pydicom import dcmread
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from dicom_node.audit.records import (
    AuditDB,
    ComparisonRecord,
    DeliveryRecord,
    DeliveryState,
    EventRecord,
    InstanceRecord,
    JobRecord,
    JobState,
    OutputKind,
    OutputRecord,
    ReceivedSegRecord,
    ReferenceState,
    utcnow,
)
from dicom_node.config import LEASE_S
from dicom_node.queue.leases import WorkerIdentity, lease_until
from dicom_node.reference.compare import SegmentComparison, UnusableReference, compare, read_segmentation
from dicom_node.storage import Storage, dataset_bytes, write_durably
from dicom_node.writers.evaluation_sr import build_evaluation_report
from dicom_node.writers.outputs import RESEARCH
from inference.model_card import ModelCard, find_card

log = logging.getLogger(__name__)

UNKNOWN_ARCHITECTURE = "unknown"


@dataclass(frozen=True)
class Work:
    """What one comparison needs, read in one short transaction."""

    reference_path: str
    reference_sop_uid: str
    source_uid: str
    source_path: str
    study_uid: str
    job_id: int
    model: str
    model_version: str
    weights_sha256: str
    seg_path: str
    destinations: tuple[str, ...]


@dataclass(frozen=True)
class RefClaim:
    """A claimed reference: its row and the attempt number, the fencing token of every write."""

    ref_id: int
    attempt: int


class NoSegmentation(Exception):
    """The job of a reference's source wrote no SEG (its prediction was not reliable)."""


class Evaluator:
    """Claims due references and compares each with the prediction for its source image."""

    def __init__(
        self,
        db: AuditDB,
        storage: Storage,
        models_root: Path | None = None,
        identity: WorkerIdentity | None = None,
        lease_s: float = LEASE_S,
    ) -> None:
        self.db = db
        self.storage = storage
        self.models_root = models_root
        self.identity = identity or WorkerIdentity.current()
        self.lease_s = lease_s

    def claim(self) -> RefClaim | None:
        """Take the oldest due reference (due -> evaluating, under this worker's lease); None when none."""
        with self.db.session() as s:
            row = s.scalar(
                select(ReceivedSegRecord)
                .where(ReceivedSegRecord.state == ReferenceState.DUE)
                .order_by(ReceivedSegRecord.id)
                .limit(1)
                .with_for_update(skip_locked=True)  # several worker processes on PostgreSQL
            )
            if row is None:
                return None
            row.state = ReferenceState.EVALUATING
            row.attempts += 1
            row.lease_owner, row.lease_expires_at = str(self.identity), lease_until(self.lease_s)
            return RefClaim(row.id, row.attempts)

    def _held(self, s: Session, claim: RefClaim) -> ReceivedSegRecord | None:
        """The claimed row, locked, while the claim is still this worker's; None (logged) once it is not."""
        ref = s.get(ReceivedSegRecord, claim.ref_id, with_for_update=True)
        assert ref is not None
        if (ref.state, ref.lease_owner, ref.attempts) != (ReferenceState.EVALUATING, str(self.identity), claim.attempt):
            log.warning("reference comparison %d: claim lost (lease expired), outcome not recorded", claim.ref_id)
            return None
        return ref

    def fail(self, claim: RefClaim, reason: str) -> None:
        """Record an unexpected failure of a comparison (state failed, and an event)."""
        self._finish(claim, ReferenceState.FAILED, reason)

    def run(self, claim: RefClaim) -> None:
        """Compare one claimed reference with our prediction and record the outcome."""
        ref_id = claim.ref_id
        try:
            work = self._work(claim)
        except NoSegmentation as exc:
            log.warning("reference %d not compared: %s", ref_id, exc)
            self._finish(claim, ReferenceState.UNUSABLE, str(exc))
            return
        if work is None:
            return
        ours = read_segmentation(work.seg_path)
        reference = read_segmentation(work.reference_path)
        try:
            comparisons = compare(ours, reference, work.source_uid)
        except UnusableReference as exc:
            log.warning("reference %s not compared: %s", work.reference_sop_uid, exc)
            self._finish(claim, ReferenceState.UNUSABLE, str(exc))
            return
        if unedited_copy(comparisons, reference, work.model):
            self._finish(claim, ReferenceState.OWN_OUTPUT, f"identical to our SEG, segments by {work.model}")
            return
        card = self.card_for(work, ours)
        sr = build_evaluation_report(
            dcmread(work.source_path, stop_before_pixels=True), ours, reference, comparisons, card
        )
        path = self.storage.output_path(work.study_uid, str(sr.SOPInstanceUID))
        write_durably(path, dataset_bytes(sr))
        if not self._record(claim, work, sr, path, comparisons):
            return
        log.info(
            "reference %s vs job %d (%s %s): %s",
            work.reference_sop_uid,
            work.job_id,
            work.model,
            work.model_version,
            ", ".join(f"{c.spec.label} Dice {_figure(c.dice)} IoU {_figure(c.jaccard)}" for c in comparisons),
        )

    def card_for(self, work: Work, ours: hd.seg.Segmentation) -> ModelCard:
        """The card of the model that made the job's prediction.

        The model's card while its weights are those of the job; otherwise (weights replaced, model
        removed) a card naming the job's model and weights, with the display name and demo flag our SEG
        recorded (Manufacturer's Model Name, Content Qualification RESEARCH).
        """
        try:
            card = find_card(work.model, self.models_root)
        except KeyError:
            card = None
        same_weights = card is not None and (
            card.weights_sha256 == work.weights_sha256
            or (not work.weights_sha256 and card.version == work.model_version)
        )
        if card is not None and same_weights:
            return card
        return ModelCard(
            name=work.model,
            display_name=str(ours.get("ManufacturerModelName", "") or work.model),
            architecture=UNKNOWN_ARCHITECTURE,
            encoder=None,
            input_size=(0, 0),
            weights_sha256=work.weights_sha256 or work.model_version,
            demo=str(ours.get("ContentQualification", "")) == RESEARCH,
        )

    def _work(self, claim: RefClaim) -> Work | None:
        """The inputs of a comparison; None (and the reference waits again) when the job is not done."""
        with self.db.session() as s:
            ref = self._held(s, claim)
            if ref is None:
                return None
            job = s.scalar(
                select(JobRecord)
                .join(InstanceRecord, JobRecord.instance_id == InstanceRecord.id)
                .where(InstanceRecord.sop_instance_uid == ref.source_sop_uid)
            )
            if job is None or job.state != JobState.DONE:
                ref.state, ref.lease_owner, ref.lease_expires_at = ReferenceState.WAITING, None, None
                return None
            seg = s.scalar(
                select(OutputRecord).where(OutputRecord.job_id == job.id, OutputRecord.kind == OutputKind.SEG)
            )
            if seg is None:  # the quality flag withheld it: nothing of ours to compare
                reasons = ((job.metrics or {}).get("quality") or {}).get("reasons") or []
                why = f"the prediction was not reliable ({'; '.join(reasons)})" if reasons else "none was written"
                raise NoSegmentation(f"no SEG of ours to compare with: {why}")
            return Work(
                reference_path=ref.instance.path,
                reference_sop_uid=ref.instance.sop_instance_uid,
                source_uid=ref.source_sop_uid,
                source_path=job.instance.path,
                study_uid=job.instance.study_instance_uid,
                job_id=job.id,
                model=job.model,
                model_version=job.model_version or "",
                weights_sha256=str((job.metrics or {}).get("weights_sha256", "")),
                seg_path=seg.path,
                destinations=tuple(job.destinations),
            )

    def _record(
        self,
        claim: RefClaim,
        work: Work,
        sr: hd.sr.Comprehensive3DSR,
        path: Path,
        comparisons: list[SegmentComparison],
    ) -> bool:
        """The SR as the job's output with its deliveries, the comparisons, the reference evaluated.
        False (nothing recorded) when the claim was lost meanwhile."""
        sr_uid = str(sr.SOPInstanceUID)
        ref_id = claim.ref_id
        with self.db.session() as s:
            ref = self._held(s, claim)
            if ref is None:
                return False
            out = s.scalar(
                select(OutputRecord).where(
                    OutputRecord.job_id == work.job_id,
                    OutputRecord.kind == OutputKind.EVAL_SR,
                    OutputRecord.sop_instance_uid == sr_uid,
                )
            )
            if out is None:
                out = OutputRecord(job_id=work.job_id, kind=OutputKind.EVAL_SR, sop_instance_uid=sr_uid)
                s.add(out)
            out.sop_class_uid = str(sr.SOPClassUID)
            out.series_instance_uid = str(sr.SeriesInstanceUID)
            out.path = str(path)
            s.flush()
            have = {d.destination for d in out.deliveries}
            for dest in work.destinations:
                if dest not in have:
                    s.add(DeliveryRecord(output_id=out.id, destination=dest, state=DeliveryState.PENDING))
            s.execute(delete(ComparisonRecord).where(ComparisonRecord.received_seg_id == ref_id))
            for c in comparisons:
                s.add(
                    ComparisonRecord(
                        received_seg_id=ref_id,
                        job_id=work.job_id,
                        model=work.model,
                        model_version=work.model_version,
                        source_sop_uid=work.source_uid,
                        reference_sop_uid=work.reference_sop_uid,
                        segment=c.spec.label,
                        reference_segments=list(c.reference_segments),
                        dice=c.dice,
                        jaccard=c.jaccard,
                        intersection_pixels=c.overlap.intersection,
                        predicted_pixels=c.overlap.predicted,
                        reference_pixels=c.overlap.reference,
                        eval_sr_sop_uid=sr_uid,
                    )
                )
            ref.state, ref.job_id, ref.detail, ref.finished_at = ReferenceState.EVALUATED, work.job_id, None, utcnow()
            ref.lease_owner, ref.lease_expires_at = None, None
            return True

    def _finish(self, claim: RefClaim, state: ReferenceState, detail: str) -> None:
        with self.db.session() as s:
            ref = self._held(s, claim)
            if ref is None:
                return
            ref.state, ref.detail, ref.finished_at = state, detail, utcnow()
            ref.lease_owner, ref.lease_expires_at = None, None
            s.add(
                EventRecord(
                    kind=f"reference_{state.value}",
                    sop_instance_uid=ref.instance.sop_instance_uid,
                    detail=f"source {ref.source_sop_uid}: {detail}",
                )
            )


def unedited_copy(comparisons: list[SegmentComparison], reference: hd.seg.Segmentation, model: str) -> bool:
    """Whether the matched reference segments name ``model`` as algorithm and equal our masks exactly."""
    names = {int(s.SegmentNumber): str(s.get("SegmentAlgorithmName", "")) for s in reference.SegmentSequence}
    return all(
        all(names.get(n) == model for n in c.reference_segments)
        and c.overlap.intersection == c.overlap.predicted == c.overlap.reference
        for c in comparisons
    )


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


__all__ = ["Evaluator", "RefClaim", "Work", "unedited_copy"]

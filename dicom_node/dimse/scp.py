"""The Storage SCP: Verification and C-STORE of spine radiographs, acknowledged only once durable.

Radiographs become segmentation jobs. Segmentation Storage (SEG) objects branch off before image
validation: they are stored and recorded the same way, then either recognised as the node's own output
or kept as a reference segmentation to measure the model against (``dicom_node.reference.intake``).

A C-STORE is answered Success only after the instance is on disk (temporary file, fsync, rename) and its
instance and job rows are committed in one transaction. The handler never raises: what it expects gets a
named status (:class:`StoreStatus`) and an ErrorComment, anything else becomes Processing Failure; every
refusal is written to the audit database with its reason.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pydicom.uid import JPEGLossless as JPEGLosslessP14
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from dicom_node.audit.instances import known_instance, new_instance
from dicom_node.audit.records import (
    AssociationRecord,
    AuditDB,
    JobRecord,
    JobState,
    utcnow,
)
from dicom_node.config import NodeConfig
from dicom_node.delivery import commitment
from dicom_node.delivery.associations import no_delay
from dicom_node.dimse import tls
from dicom_node.dimse.decoded import DecodedCache
from dicom_node.dimse.decoding import DecodeError, Decoder
from dicom_node.dimse.status import StoreStatus
from dicom_node.queue.lifecycle import create as create_job
from dicom_node.queue.lifecycle import set_state
from dicom_node.reference import intake
from dicom_node.storage import Storage, write_durably
from dicom_node.writers.outputs import MANUFACTURER as OWN_MANUFACTURER
from inference.preprocess import PreparedImage, UnusableImageError, declared_size_problem, from_dataset

log = logging.getLogger(__name__)

# Storage SOP classes we segment: CR, DX (presentation and processing), SC (single and multi-frame grey).
ACCEPTED_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
}
ACCEPTED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessP14,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)
REQUIRED_UIDS = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
# Secondary Capture is a radiograph when its Modality says X-ray, or when it says nothing specific (OT or
# empty) and the capture is not one that cannot hold a radiograph: a workstation capture (screens,
# rendered results), a scanned document, a drawing, a synthetic image. The node's own overlay (OT, DI) is
# recognised by its Manufacturer and never segmented again, so that a PACS routing every SC cannot loop.
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
SC_RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "RG", "RF", "PX"})
SC_UNSPECIFIED_MODALITIES = frozenset({"OT", ""})
SC_NON_RADIOGRAPH_CONVERSIONS = frozenset({"WSD", "SD", "DRW", "SYN"})
PENDING_STATES = (JobState.RECEIVED, JobState.QUEUED, JobState.RUNNING)


class Refusal(Exception):
    """An expected reason to refuse an instance, with its status."""

    def __init__(self, status: StoreStatus, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment[:64]  # ErrorComment is LO (64 chars)
        self.detail = comment


@dataclass
class ReceiveResult:
    status: StoreStatus
    job_id: int | None = None
    duplicate: bool = False


class Receiver:
    """Owns the pynetdicom AE acting as SCP; hands new jobs to ``on_job``."""

    def __init__(
        self,
        config: NodeConfig,
        db: AuditDB,
        storage: Storage,
        on_job: Callable[[int], None],
        on_reference: Callable[[], None] | None = None,
        decoded: DecodedCache | None = None,
    ) -> None:
        self.config = config
        self.decoded = decoded  # where decoded images wait for a worker of this process
        self.decoder = Decoder(config.decode_timeout_s)  # compressed pixel data: a killable helper process
        self.db = db
        self.storage = storage
        self.on_job = on_job
        self.on_reference = on_reference  # a reference SEG is due for comparison
        self.accepting = True  # False while shutting down: new instances get Out of Resources
        self._backlog_lock = threading.Lock()
        self.ae = self._build_ae()
        self._server: Any = None

    # --- AE ------------------------------------------------------------------------------------
    def _build_ae(self) -> AE:
        ae = AE(ae_title=self.config.ae_title)
        ae.acse_timeout = self.config.acse_timeout_s
        ae.dimse_timeout = self.config.dimse_timeout_s
        ae.network_timeout = self.config.dimse_timeout_s
        ae.maximum_pdu_size = 0  # unlimited: fewer PDVs for large radiographs
        ae.require_called_aet = True
        if self.config.allowed_calling_aes:
            ae.require_calling_aet = list(self.config.allowed_calling_aes)
        ae.add_supported_context(Verification)
        # storage commitment reports from destinations (N-EVENT-REPORT, the peer acting as SCP of the class)
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        for uid in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(uid, list(ACCEPTED_TRANSFER_SYNTAXES))
        for uid in intake.REFERENCE_SOP_CLASSES:
            ae.add_supported_context(uid, list(intake.REFERENCE_TRANSFER_SYNTAXES))
        return ae

    def start(self) -> int:
        """Start listening in the background; return the bound port."""
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, no_delay),  # responses go out at once (no Nagle wait)
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_N_EVENT_REPORT, functools.partial(commitment.on_report, self.config, self.db)),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_ended),
            (evt.EVT_ABORTED, self._on_ended),
        ]
        self._server = self.ae.start_server(
            (self.config.bind, self.config.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=tls.server_context(self.config),  # None: plain TCP
        )
        port = int(self._server.server_address[1])
        log.info("listening as %s on %s:%d", self.config.ae_title, self.config.bind, port)
        self.decoder.start()  # the decoder process starts in the background
        return port

    def stop(self) -> None:
        self.accepting = False
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.decoder.stop()

    # --- association audit -----------------------------------------------------------------------
    def _on_accepted(self, event: evt.Event) -> None:
        a = event.assoc
        with self.db.session() as s:
            rec = AssociationRecord(
                calling_ae=a.requestor.ae_title,
                called_ae=a.acceptor.ae_title,
                peer_address=str(a.requestor.address),
                peer_port=int(a.requestor.port or 0),
                accepted=True,
            )
            s.add(rec)
            s.flush()
            a.spinenode_association_id = rec.id  # type: ignore[attr-defined]

    def _on_rejected(self, event: evt.Event) -> None:
        a = event.assoc
        rq = a.requestor
        called = getattr(a.acse, "requestor", None)
        primitive = getattr(called, "primitive", None) if called else None
        called_ae = str(getattr(primitive, "called_ae_title", "") or "").strip()
        if self.config.allowed_calling_aes and rq.ae_title not in self.config.allowed_calling_aes:
            reason = f"calling AE {rq.ae_title!r} not in the allow-list"
        elif called_ae and called_ae != self.config.ae_title:
            reason = f"called AE {called_ae!r} is not ours ({self.config.ae_title!r})"
        else:
            reason = "rejected at association (e.g. too many associations)"
        log.warning("association from %s:%s rejected: %s", rq.address, rq.port, reason)
        with self.db.session() as s:
            s.add(
                AssociationRecord(
                    calling_ae=rq.ae_title or "",
                    called_ae=called_ae,
                    peer_address=str(rq.address),
                    peer_port=int(rq.port or 0),
                    accepted=False,
                    reason=reason,
                    ended_at=utcnow(),
                )
            )

    def _on_ended(self, event: evt.Event) -> None:
        assoc_id = getattr(event.assoc, "spinenode_association_id", None)
        if assoc_id is None:
            return
        with self.db.session() as s:
            rec = s.get(AssociationRecord, assoc_id)
            if rec is not None and rec.ended_at is None:
                rec.ended_at = utcnow()
                if event.event is evt.EVT_ABORTED:
                    rec.reason = "aborted"

    # --- DIMSE ---------------------------------------------------------------------------------
    def handle_echo(self, event: evt.Event) -> int:
        return int(StoreStatus.SUCCESS)

    def handle_store(self, event: evt.Event) -> Dataset:
        """C-STORE handler: returns a status dataset, never raises."""
        rsp = Dataset()
        assoc_id = getattr(event.assoc, "spinenode_association_id", None)
        sop_uid = None
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            sop_uid = str(ds.get("SOPInstanceUID", "")) or None
            result = self.receive(
                ds,
                event.encoded_dataset(),
                event.context.abstract_syntax,
                event.assoc.acceptor.ae_title,
                event.assoc.requestor.ae_title,
                assoc_id,
            )
            rsp.Status = int(result.status)
        except Refusal as exc:
            rsp.Status = int(exc.status)
            rsp.ErrorComment = exc.comment
            log.warning("refused %s: %s", sop_uid, exc.detail)
            self._record_refusal(exc.status, exc.detail, sop_uid, assoc_id)
        except Exception as exc:  # decoding of the raw data set, or a bug: report, never crash
            status = StoreStatus.CANNOT_UNDERSTAND if _is_decode_error(exc) else StoreStatus.UNEXPECTED_ERROR
            detail = f"{type(exc).__name__}: {exc}"
            rsp.Status = int(status)
            rsp.ErrorComment = detail[:64]
            log.exception("C-STORE of %s failed", sop_uid)
            self._record_refusal(status, detail, sop_uid, assoc_id)
        return rsp

    def receive(
        self,
        ds: Dataset,
        encoded: bytes,
        context_sop_class: str,
        called_ae: str,
        calling_ae: str,
        assoc_id: int | None = None,
    ) -> ReceiveResult:
        """Validate, persist and enqueue one instance. Raises :class:`Refusal` for expected refusals."""
        self._check_capacity()
        if context_sop_class in intake.REFERENCE_SOP_CLASSES:
            return self._receive_segmentation(ds, encoded, context_sop_class, assoc_id)
        prepared = self.validate(ds, context_sop_class)
        path = self._store(ds, encoded)
        route = self.config.route_for(
            called_ae,
            calling_ae,
            str(ds.get("Modality", "")),
            str(ds.get("BodyPartExamined", "")),
            str(ds.get("ViewPosition", "")),
        )
        try:
            job_id, duplicate = self._record_instance(ds, path, len(encoded), assoc_id, route, called_ae)
        except SQLAlchemyError as exc:
            raise Refusal(StoreStatus.OUT_OF_RESOURCES, f"cannot record instance: {type(exc).__name__}") from exc
        if job_id is not None:
            if self.decoded is not None:
                self.decoded.put(job_id, ds, prepared)
            self.on_job(job_id)
        return ReceiveResult(StoreStatus.SUCCESS, job_id, duplicate)

    def _store(self, ds: Dataset, encoded: bytes) -> Path:
        """Write the instance durably; returns its path."""
        path = self.storage.instance_path(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID))
        try:
            write_durably(path, encoded)
        except OSError as exc:
            raise Refusal(StoreStatus.OUT_OF_RESOURCES, f"cannot store instance: {exc.strerror or exc}") from exc
        return path

    def _receive_segmentation(
        self, ds: Dataset, encoded: bytes, context_sop_class: str, assoc_id: int | None
    ) -> ReceiveResult:
        """Validate, persist and record a SEG: our own output, or a reference to compare with."""
        self._check_identity(ds, context_sop_class)
        try:
            sources = intake.check_segmentation(ds)
        except intake.UnusableSegmentation as exc:
            raise Refusal(StoreStatus.CANNOT_UNDERSTAND, str(exc)) from exc
        path = self._store(ds, encoded)
        try:
            with self.db.session() as s:
                due, duplicate = intake.record(s, ds, path, len(encoded), assoc_id, sources)
        except SQLAlchemyError as exc:
            raise Refusal(StoreStatus.OUT_OF_RESOURCES, f"cannot record instance: {type(exc).__name__}") from exc
        if due and self.on_reference is not None:
            self.on_reference()
        return ReceiveResult(StoreStatus.SUCCESS, None, duplicate)

    def _check_identity(self, ds: Dataset, context_sop_class: str) -> None:
        """UIDs present and valid, SOP class that of the presentation context."""
        for keyword in REQUIRED_UIDS:
            value = str(ds.get(keyword, "") or "")
            if not value or not UID(value).is_valid:
                raise Refusal(StoreStatus.CANNOT_UNDERSTAND, f"missing or invalid {keyword}")
        sop_class = str(ds.get("SOPClassUID", ""))
        if sop_class != context_sop_class:
            raise Refusal(
                StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                f"SOPClassUID {sop_class} does not match the presentation context {context_sop_class}",
            )

    def validate(self, ds: Dataset, context_sop_class: str) -> PreparedImage:
        """Refuse what we cannot use, before any pixel decoding where possible; return the decoded image."""
        self._check_identity(ds, context_sop_class)
        sop_class = str(ds.SOPClassUID)
        if "PixelData" not in ds:
            raise Refusal(StoreStatus.CANNOT_UNDERSTAND, "no pixel data")
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if rows <= 0 or cols <= 0:
            raise Refusal(StoreStatus.CANNOT_UNDERSTAND, "Rows/Columns missing or zero")
        too_large = declared_size_problem(rows, cols, frames, self.config.max_pixels)
        if too_large is not None:
            raise Refusal(StoreStatus.CANNOT_UNDERSTAND, too_large)
        if sop_class.startswith(SECONDARY_CAPTURE_PREFIX):
            _check_secondary_capture(ds)
        try:
            return from_dataset(ds, self.decoder.decode(ds))
        except DecodeError as exc:
            raise Refusal(StoreStatus.CANNOT_UNDERSTAND, f"unusable image: {exc}") from exc
        except UnusableImageError as exc:
            raise Refusal(StoreStatus.CANNOT_UNDERSTAND, f"unusable image: {exc}") from exc
        except BaseException as exc:  # decoder plugins may raise anything, even Rust panics
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            raise Refusal(StoreStatus.CANNOT_UNDERSTAND, f"unusable image: {type(exc).__name__}: {exc}") from exc

    def _check_capacity(self) -> None:
        if not self.accepting:
            raise Refusal(StoreStatus.OUT_OF_RESOURCES, "node is shutting down")
        free = self.storage.free_mb()
        if free < self.config.min_free_disk_mb:
            raise Refusal(StoreStatus.OUT_OF_RESOURCES, f"low disk space: {free:.0f} MB free")
        with self.db.session() as s:
            backlog = s.scalar(select(func.count(JobRecord.id)).where(JobRecord.state.in_(PENDING_STATES))) or 0
        if backlog >= self.config.max_backlog:
            raise Refusal(StoreStatus.OUT_OF_RESOURCES, f"backlog full ({backlog} jobs waiting)")

    def _record_instance(
        self, ds: Dataset, path: Any, size: int, assoc_id: int | None, route: Any, called_ae: str
    ) -> tuple[int | None, bool]:
        """Insert instance + queued job in one transaction. Returns (job id to run or None, duplicate)."""
        with self.db.session() as s:
            existing = known_instance(s, ds, assoc_id)
            if existing is not None:
                job = s.scalar(select(JobRecord).where(JobRecord.instance_id == existing.id))
                if job is not None and job.state == JobState.FAILED:
                    set_state(s, job, JobState.QUEUED, "re-sent after failure")
                    return job.id, True
                return None, True
            inst = new_instance(s, ds, path, size, assoc_id)
            job = create_job(
                s,
                instance_id=inst.id,
                model=route.model,
                destinations=[str(d) for d in route.destinations],
                called_ae=called_ae,
                flip_agreement=route.flip_agreement,
            )
            return job.id, False

    def _record_refusal(self, status: StoreStatus, detail: str, sop_uid: str | None, assoc_id: int | None) -> None:
        try:
            self.db.record_event(
                "refused", detail, status=int(status), sop_instance_uid=sop_uid, association_id=assoc_id
            )
        except Exception:  # the database itself may be the problem; the status still goes out
            log.exception("could not record refusal of %s", sop_uid)


def _check_secondary_capture(ds: Dataset) -> None:
    """Refuse a Secondary Capture that is not a radiograph (see ``SC_RADIOGRAPH_MODALITIES``)."""
    if str(ds.get("Manufacturer", "")) == OWN_MANUFACTURER:
        raise Refusal(StoreStatus.CANNOT_UNDERSTAND, f"a {OWN_MANUFACTURER} overlay is not segmented again")
    modality = str(ds.get("Modality", "") or "")
    if modality in SC_RADIOGRAPH_MODALITIES:
        return
    if modality not in SC_UNSPECIFIED_MODALITIES:
        raise Refusal(StoreStatus.CANNOT_UNDERSTAND, f"Secondary Capture of modality {modality} is not a radiograph")
    conversion = str(ds.get("ConversionType", "") or "")
    if conversion in SC_NON_RADIOGRAPH_CONVERSIONS:
        raise Refusal(
            StoreStatus.CANNOT_UNDERSTAND,
            f"Secondary Capture of modality {modality or 'none'} and conversion {conversion} is not a radiograph",
        )


def _is_decode_error(exc: Exception) -> bool:
    """Errors pydicom raises while decoding a malformed raw data set."""
    return isinstance(exc, ValueError | KeyError | EOFError | TypeError | NotImplementedError | OverflowError)

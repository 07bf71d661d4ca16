"""DICOM Storage Commitment (Push Model, PS3.4 Annex J) for destinations that require it.

A C-STORE Success only says the peer received an object; an archive that commits to it takes
responsibility for keeping it. For a destination in ``[commitment] destinations`` a delivery goes
``pending`` -> (C-STORE Success) ``committing`` -> (N-EVENT-REPORT: committed) ``delivered``:

* ``Committer.run_once`` (called by the sender's loop) claims the ``committing`` deliveries that have
  no request yet, or whose request got no report within ``commitment_timeout_s``, and asks each
  destination once per pass: N-ACTION (action type 1) with a new Transaction UID and the SOP Class and
  Instance UIDs of the outputs. Every request is an attempt in the delivery's audit; a refused or
  unanswered request is retried with the sender's backoff, and after ``retry_max_attempts`` requests the
  delivery fails ("no storage commitment").
* ``record_report`` handles the N-EVENT-REPORT, whether it comes on the request's own association or
  on a new one to the node's SCP (as Orthanc sends it): each referenced instance of the transaction
  becomes ``delivered`` (``committed_at``); each failed one goes back to ``pending`` - it is stored
  again and commitment asked again - or fails after ``retry_max_attempts``, with the failure reason.

Retention never deletes a file whose deliveries are not all ``delivered``, so it waits for commitment.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel
from sqlalchemy import or_, select, update

from dicom_node.audit.records import AuditDB, DeliveryAttempt, DeliveryRecord, DeliveryState, OutputRecord, utcnow
from dicom_node.config import Destination, NodeConfig
from dicom_node.dimse import tls
from dicom_node.queue.leases import WorkerIdentity, lease_until

log = logging.getLogger(__name__)

# the well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.5)
COMMITMENT_INSTANCE_UID = "1.2.840.10008.1.20.1.1"
REQUEST_ACTION = 1  # N-ACTION Action Type ID: request storage commitment
EVENT_ALL_COMMITTED = 1  # N-EVENT-REPORT Event Type ID: every instance committed
EVENT_SOME_FAILED = 2  # ... some instances could not be committed
SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110  # N-EVENT-REPORT response when the report cannot be recorded
BATCH_LIMIT = 200  # deliveries per commitment request


def request_dataset(transaction_uid: str, refs: list[tuple[str, str]]) -> Dataset:
    """The N-ACTION Action Information: Transaction UID and the (SOP Class, SOP Instance) references."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    items = []
    for sop_class, sop_instance in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


@dataclass(frozen=True)
class Report:
    """What an N-EVENT-REPORT says about one transaction."""

    transaction_uid: str
    committed: frozenset[str]  # SOP Instance UIDs
    failed: dict[str, int]  # SOP Instance UID -> Failure Reason

    @classmethod
    def from_dataset(cls, ds: Dataset) -> Report:
        committed = frozenset(str(i.ReferencedSOPInstanceUID) for i in ds.get("ReferencedSOPSequence", []))
        failed = {
            str(i.ReferencedSOPInstanceUID): int(i.get("FailureReason", PROCESSING_FAILURE))
            for i in ds.get("FailedSOPSequence", [])
        }
        return cls(str(ds.TransactionUID), committed, failed)


def record_report(db: AuditDB, report: Report, retry_initial_s: float, retry_max_s: float, max_attempts: int) -> int:
    """Apply a commitment report to the deliveries of its transaction; returns how many it settled."""
    from dicom_node.delivery.sender import backoff_s

    settled = 0
    now = utcnow()
    with db.session() as s:
        rows = s.execute(
            select(DeliveryRecord, OutputRecord.sop_instance_uid)
            .join(OutputRecord, DeliveryRecord.output_id == OutputRecord.id)
            .where(DeliveryRecord.commit_uid == report.transaction_uid)
            .where(DeliveryRecord.state == DeliveryState.COMMITTING)
            .with_for_update(of=DeliveryRecord)
        ).all()
        for d, sop_uid in rows:
            if sop_uid in report.committed:
                d.state, d.committed_at, d.delivered_at = DeliveryState.DELIVERED, now, now
                d.last_status, d.last_error = SUCCESS, None
                s.add(DeliveryAttempt(delivery_id=d.id, status=SUCCESS, error=f"committed ({report.transaction_uid})"))
                settled += 1
            elif sop_uid in report.failed:
                reason = report.failed[sop_uid]
                why = f"storage commitment failed: reason 0x{reason:04X} ({report.transaction_uid})"
                s.add(DeliveryAttempt(delivery_id=d.id, status=reason, error=why))
                d.last_status, d.last_error, d.commit_uid = reason, why, None
                if d.attempts >= max_attempts:
                    d.state = DeliveryState.FAILED
                else:  # store it again, then ask again
                    d.state = DeliveryState.PENDING
                    d.next_attempt_at = now + timedelta(seconds=backoff_s(d.attempts, retry_initial_s, retry_max_s))
                settled += 1
    if not rows:
        log.warning("storage commitment report for an unknown transaction %s", report.transaction_uid)
    return settled


def on_report(config: NodeConfig, db: AuditDB, event: evt.Event) -> tuple[int, Dataset | None]:
    """EVT_N_EVENT_REPORT handler (the node's SCP, or a request's own association): status and no reply."""
    try:
        report = Report.from_dataset(event.event_information)
        record_report(db, report, config.retry_initial_s, config.retry_max_s, config.retry_max_attempts)
    except Exception:
        log.exception("storage commitment report not recorded")
        return PROCESSING_FAILURE, None
    return SUCCESS, None


class Committer:
    """Sends the storage commitment requests of one process (see the module docstring)."""

    def __init__(self, config: NodeConfig, db: AuditDB, identity: WorkerIdentity) -> None:
        self.config = config
        self.db = db
        self.identity = identity

    def handle_report(self, event: evt.Event) -> tuple[int, Dataset | None]:
        return on_report(self.config, self.db, event)

    def _due(self, now: datetime) -> list[tuple[int, str, str, str]]:
        """Claim (lease) the deliveries whose commitment must be requested now."""
        stale = now - timedelta(seconds=self.config.commitment_timeout_s)
        with self.db.session() as s:
            rows = list(
                s.execute(
                    select(
                        DeliveryRecord.id,
                        DeliveryRecord.destination,
                        OutputRecord.sop_class_uid,
                        OutputRecord.sop_instance_uid,
                    )
                    .join(OutputRecord, DeliveryRecord.output_id == OutputRecord.id)
                    .where(DeliveryRecord.state == DeliveryState.COMMITTING, DeliveryRecord.next_attempt_at <= now)
                    .where(
                        or_(
                            DeliveryRecord.commit_uid.is_(None),
                            DeliveryRecord.commit_requested_at < stale,  # no report in time: asked again
                        )
                    )
                    .where(or_(DeliveryRecord.lease_owner.is_(None), DeliveryRecord.lease_expires_at < now))
                    .order_by(DeliveryRecord.id)
                    .limit(BATCH_LIMIT)
                    .with_for_update(of=DeliveryRecord, skip_locked=True)
                )
            )
            if rows:
                s.execute(
                    update(DeliveryRecord)
                    .where(DeliveryRecord.id.in_([r[0] for r in rows]))
                    .values(lease_owner=str(self.identity), lease_expires_at=lease_until(self.config.lease_s))
                )
        return [(int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]

    def run_once(self) -> int:
        """Request commitment for every due delivery, one N-ACTION per destination. Returns how many."""
        self._expire(utcnow())
        due = self._due(utcnow())
        by_dest: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
        for delivery_id, dest, sop_class, sop_uid in due:
            by_dest[dest].append((delivery_id, sop_class, sop_uid))
        for dest, items in by_dest.items():
            ids = [i for i, _, _ in items]
            transaction = generate_uid()
            with self.db.session() as s:  # before the request: a report may come on its own association
                s.execute(
                    update(DeliveryRecord)
                    .where(DeliveryRecord.id.in_(ids))
                    .values(commit_uid=transaction, commit_requested_at=utcnow())
                )
            status, error = self._request(Destination.parse(dest), transaction, [(c, i) for _, c, i in items])
            self._record_request(ids, transaction, status, error)
        return len(due)

    def _expire(self, now: datetime) -> None:
        """Fail the deliveries whose last allowed request got no report within the timeout."""
        stale = now - timedelta(seconds=self.config.commitment_timeout_s)
        with self.db.session() as s:
            rows = s.scalars(
                select(DeliveryRecord)
                .where(DeliveryRecord.state == DeliveryState.COMMITTING, DeliveryRecord.commit_requested_at < stale)
                .where(DeliveryRecord.commit_attempts >= self.config.retry_max_attempts)
                .with_for_update(skip_locked=True)
            )
            for d in rows:
                d.state = DeliveryState.FAILED
                d.last_error = (
                    f"no storage commitment report within {self.config.commitment_timeout_s:g} s "
                    f"of {d.commit_attempts} request(s)"
                )
                s.add(DeliveryAttempt(delivery_id=d.id, status=None, error=d.last_error))
                log.warning("delivery %d to %s: %s", d.id, d.destination, d.last_error)

    def _request(
        self, dest: Destination, transaction: str, refs: list[tuple[str, str]]
    ) -> tuple[int | None, str | None]:
        ae = AE(ae_title=self.config.ae_title)
        ae.acse_timeout = self.config.acse_timeout_s
        ae.dimse_timeout = self.config.dimse_timeout_s
        ae.network_timeout = self.config.dimse_timeout_s
        ae.add_requested_context(StorageCommitmentPushModel)
        tls_args = tls.client_args(self.config, dest)
        try:
            assoc = ae.associate(
                dest.host,
                dest.port,
                ae_title=dest.ae_title,
                tls_args=tls_args,
                evt_handlers=[(evt.EVT_N_EVENT_REPORT, self.handle_report)],  # a report on this association
            )
        except Exception as exc:  # noqa: BLE001 - TLS errors and the like: retried like a refused association
            return None, f"storage commitment: {type(exc).__name__}: {exc}"
        if not assoc.is_established:
            return None, "storage commitment: association rejected, aborted or never connected"
        try:
            rsp, _ = assoc.send_n_action(
                request_dataset(transaction, refs), REQUEST_ACTION, StorageCommitmentPushModel, COMMITMENT_INSTANCE_UID
            )
        finally:
            assoc.release()
        status = int(rsp.Status) if rsp is not None and "Status" in rsp else None
        if status is None:
            return None, "storage commitment: no N-ACTION response"
        return status, None if status == SUCCESS else f"storage commitment request refused: status 0x{status:04X}"

    def _record_request(self, ids: list[int], transaction: str, status: int | None, error: str | None) -> None:
        from dicom_node.delivery.sender import backoff_s

        now = utcnow()
        with self.db.session() as s:
            locked = s.scalars(
                select(DeliveryRecord).where(DeliveryRecord.id.in_(ids)).order_by(DeliveryRecord.id).with_for_update()
            )
            for d in locked:
                d.lease_owner = d.lease_expires_at = None
                d.commit_attempts += 1
                note = error or f"storage commitment requested ({transaction})"
                s.add(DeliveryAttempt(delivery_id=d.id, status=status, error=note))
                if d.state != DeliveryState.COMMITTING or status == SUCCESS:
                    continue  # settled meanwhile (a report on the request's association), or awaiting the report
                d.commit_uid = None
                d.last_status, d.last_error = status, error
                if d.commit_attempts >= self.config.retry_max_attempts:
                    d.state = DeliveryState.FAILED
                    log.warning("delivery %d to %s failed for good: %s", d.id, d.destination, error)
                else:
                    delay = backoff_s(d.commit_attempts, self.config.retry_initial_s, self.config.retry_max_s)
                    d.next_attempt_at = now + timedelta(seconds=delay)

"""Delivery of results: C-STORE or STOW-RS to each destination, retried with persisted exponential backoff.

Results go out on an association kept open per DIMSE destination (``dicom_node.delivery.associations``), or as
one STOW-RS request per pass to a DICOMweb destination (``dicom_node.dicomweb.client``).
Pending deliveries live in the database with their next attempt time, so an outage or a restart only
delays them. Each attempt is recorded (status, error, duration). After ``retry_max_attempts`` a delivery
is marked failed with the peer's last status/reason - at once when the peer's answer will not change on
retry (a STOW-RS 4xx such as 401 or 404); ``spinenode retry --failed`` queues it again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from datetime import timedelta

from sqlalchemy import or_, select, update

from dicom_node.audit.records import AuditDB, DeliveryAttempt, DeliveryRecord, DeliveryState, OutputRecord, utcnow
from dicom_node.config import Destination, NodeConfig, StowDestination, parse_destination
from dicom_node.delivery.associations import Connections
from dicom_node.delivery.commitment import Committer
from dicom_node.dicomweb.client import Outcome, StowClient
from dicom_node.dimse import tls
from dicom_node.dimse.status import is_delivered
from dicom_node.queue.leases import WorkerIdentity, lease_until

log = logging.getLogger(__name__)

BATCH_LIMIT = 60  # deliveries handled per pass (grouped into one association per destination)
IDLE_POLL_S = 1.0


def backoff_s(attempts: int, initial: float, cap: float) -> float:
    """Delay before the next attempt after ``attempts`` failures: initial, 2x, 4x, ... capped."""
    return min(cap, initial * 2 ** max(attempts - 1, 0))


class Sender:
    def __init__(self, config: NodeConfig, db: AuditDB, identity: WorkerIdentity | None = None) -> None:
        self.config = config
        self.db = db
        self.identity = identity or WorkerIdentity.current()  # lease owner of the deliveries it sends
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connections = Connections(config.ae_title, config.dimse_timeout_s, config.keep_open_s)
        self.committer = Committer(config, db, self.identity)  # storage commitment, where a destination asks
        self.stow = StowClient()

    def notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="sender", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.notify()
        if self._thread:
            self._thread.join(timeout)
        self.connections.close_all()
        self.stow.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                did = self.run_once()
                if self.config.commitment_destinations:
                    did += self.committer.run_once()
            except Exception:  # never let the sender die; the next pass retries
                log.exception("delivery pass failed")
                did = 0
            if not did:
                self.connections.close_idle()
                with self._wake:
                    self._wake.wait(IDLE_POLL_S)

    def run_once(self) -> int:
        """Claim the due deliveries (up to ``BATCH_LIMIT``) and attempt each once. Returns how many.

        Several processes may send (the receiver and every worker): a delivery is claimed under this
        process's lease (``lease_owner``, renewed by its ``LeaseKeeper``) with ``FOR UPDATE SKIP
        LOCKED`` on PostgreSQL, so each is attempted by one sender at a time; a sender that dies leaves
        it to the others once the lease has expired."""
        now = utcnow()
        with self.db.session() as s:
            due = list(
                s.execute(
                    select(DeliveryRecord.id, DeliveryRecord.destination, OutputRecord.path)
                    .join(OutputRecord, DeliveryRecord.output_id == OutputRecord.id)
                    .where(DeliveryRecord.state == DeliveryState.PENDING, DeliveryRecord.next_attempt_at <= now)
                    .where(or_(DeliveryRecord.lease_owner.is_(None), DeliveryRecord.lease_expires_at < now))
                    .order_by(DeliveryRecord.id)
                    .limit(BATCH_LIMIT)
                    .with_for_update(of=DeliveryRecord, skip_locked=True)
                )
            )
            if due:
                s.execute(
                    update(DeliveryRecord)
                    .where(DeliveryRecord.id.in_([row[0] for row in due]))
                    .values(lease_owner=str(self.identity), lease_expires_at=lease_until(self.config.lease_s))
                )
        by_dest: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for delivery_id, dest, path in due:
            by_dest[dest].append((delivery_id, path))
        for dest, items in by_dest.items():
            if self._stop.is_set():
                break
            self._deliver(dest, items)
        return len(due)

    def _send(self, dest: Destination | StowDestination, paths: list[str]) -> list[Outcome]:
        if isinstance(dest, StowDestination):
            return self.stow.send(self.config.stow(dest), paths)
        results = self.connections.send(dest, paths, tls.client_args(self.config, dest))
        return [Outcome(status, error) for status, error in results]

    def _deliver(self, dest_spec: str, items: list[tuple[int, str]]) -> None:
        start = time.perf_counter()
        try:
            dest = parse_destination(dest_spec)
            results = self._send(dest, [p for _, p in items])
        except Exception as exc:  # noqa: BLE001 - unreadable output file, socket errors, a destination no longer valid
            results = [Outcome(None, f"{type(exc).__name__}: {exc}")] * len(items)
        elapsed = (time.perf_counter() - start) * 1000 / max(len(items), 1)
        with self.db.session() as s:
            ids = [delivery_id for delivery_id, _ in items]
            locked = s.scalars(
                select(DeliveryRecord).where(DeliveryRecord.id.in_(ids)).order_by(DeliveryRecord.id).with_for_update()
            )
            rows = {d.id: d for d in locked}  # one statement locks the batch (in id order: no deadlock)
            for (delivery_id, _), outcome in zip(items, results, strict=True):
                status, error = outcome.status, outcome.error
                d = rows[delivery_id]
                s.add(DeliveryAttempt(delivery_id=d.id, status=status, error=error, duration_ms=round(elapsed, 1)))
                if d.lease_owner not in (None, str(self.identity)) or d.state != DeliveryState.PENDING:
                    continue  # our lease expired and another sender has it: the attempt is logged, no more
                d.lease_owner = d.lease_expires_at = None
                d.attempts += 1
                d.last_status, d.last_error = status, error
                if status is not None and is_delivered(status) and dest_spec in self.config.commitment_destinations:
                    d.state, d.commit_uid = DeliveryState.COMMITTING, None  # stored; commitment requested next
                    d.next_attempt_at = utcnow()
                    self.notify()
                elif status is not None and is_delivered(status):
                    d.state = DeliveryState.DELIVERED
                    d.delivered_at = utcnow()
                elif outcome.permanent or d.attempts >= self.config.retry_max_attempts:
                    d.state = DeliveryState.FAILED
                    why = error or f"status 0x{status:04X}"
                    log.warning("delivery %d to %s failed for good: %s", d.id, dest_spec, why)
                else:
                    delay = backoff_s(d.attempts, self.config.retry_initial_s, self.config.retry_max_s)
                    d.next_attempt_at = utcnow() + timedelta(seconds=delay)
                    why = error or f"status 0x{status:04X}"
                    log.info("delivery %d to %s: %s; retry in %.0f s", d.id, dest_spec, why, delay)


def requeue_deliveries(db: AuditDB, include_failed: bool) -> int:
    """Make pending (and, with ``include_failed``, failed) deliveries due now. Returns how many."""
    states = [DeliveryState.PENDING] + ([DeliveryState.FAILED] if include_failed else [])
    with db.session() as s:
        rows = list(s.scalars(select(DeliveryRecord).where(DeliveryRecord.state.in_(states))))
        for d in rows:
            if d.state == DeliveryState.FAILED:
                d.attempts = 0
            d.state = DeliveryState.PENDING
            d.next_attempt_at = utcnow()
        return len(rows)

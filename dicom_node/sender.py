"""Delivery of results: C-STORE to each destination, retried with persisted exponential backoff.

Pending deliveries live in the database with their next attempt time, so an outage or a restart only
delays them. Each attempt is recorded (status, error, duration). After ``retry_max_attempts`` a delivery
is marked failed with the peer's last status/reason; ``spinenode retry --failed`` queues it again.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import defaultdict
from datetime import timedelta

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import select

from dicom_node import tls
from dicom_node.audit import AuditDB, DeliveryAttempt, DeliveryRecord, DeliveryState, OutputRecord, utcnow
from dicom_node.config import Destination, NodeConfig
from dicom_node.status import is_delivered

log = logging.getLogger(__name__)

BATCH_LIMIT = 60  # deliveries handled per pass (grouped into one association per destination)
IDLE_POLL_S = 1.0


def backoff_s(attempts: int, initial: float, cap: float) -> float:
    """Delay before the next attempt after ``attempts`` failures: initial, 2x, 4x, ... capped."""
    return min(cap, initial * 2 ** max(attempts - 1, 0))


def send_files(
    ae_title: str,
    dest: Destination,
    paths: list[str],
    timeout: float = 30.0,
    tls_args: tuple[ssl.SSLContext, str] | None = None,
) -> list[tuple[int | None, str | None]]:
    """C-STORE ``paths`` to ``dest`` in one association (over TLS with ``tls_args``: context, host name).
    Per file: (status or None, error or None)."""
    datasets = [dcmread(p) for p in paths]
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        reason = "association rejected" if assoc.is_rejected else "association failed (peer unreachable?)"
        return [(None, reason)] * len(paths)
    results: list[tuple[int | None, str | None]] = []
    try:
        for ds in datasets:
            try:
                rsp = assoc.send_c_store(ds)
            except Exception as exc:  # noqa: BLE001 - a peer problem for this file, recorded
                results.append((None, f"{type(exc).__name__}: {exc}"))
                continue
            if rsp is None or "Status" not in rsp:
                results.append((None, "no response (timeout or abort)"))
            else:
                comment = str(rsp.get("ErrorComment", "")) or None
                results.append((int(rsp.Status), comment))
    finally:
        if assoc.is_established:
            assoc.release()
    return results


class Sender:
    def __init__(self, config: NodeConfig, db: AuditDB) -> None:
        self.config = config
        self.db = db
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                did = self.run_once()
            except Exception:  # never let the sender die; the next pass retries
                log.exception("delivery pass failed")
                did = 0
            if not did:
                with self._wake:
                    self._wake.wait(IDLE_POLL_S)

    def run_once(self) -> int:
        """Attempt every due delivery once. Returns how many were attempted."""
        now = utcnow()
        with self.db.session() as s:
            due = list(
                s.execute(
                    select(DeliveryRecord.id, DeliveryRecord.destination, OutputRecord.path)
                    .join(OutputRecord, DeliveryRecord.output_id == OutputRecord.id)
                    .where(DeliveryRecord.state == DeliveryState.PENDING, DeliveryRecord.next_attempt_at <= now)
                    .order_by(DeliveryRecord.id)
                    .limit(BATCH_LIMIT)
                )
            )
        by_dest: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for delivery_id, dest, path in due:
            by_dest[dest].append((delivery_id, path))
        for dest, items in by_dest.items():
            if self._stop.is_set():
                break
            self._deliver(Destination.parse(dest), items)
        return len(due)

    def _deliver(self, dest: Destination, items: list[tuple[int, str]]) -> None:
        start = time.perf_counter()
        try:
            paths = [p for _, p in items]
            tls_args = tls.client_args(self.config, dest)
            results = send_files(self.config.ae_title, dest, paths, self.config.dimse_timeout_s, tls_args)
        except Exception as exc:  # unreadable output file, socket errors
            results = [(None, f"{type(exc).__name__}: {exc}")] * len(items)
        elapsed = (time.perf_counter() - start) * 1000 / max(len(items), 1)
        with self.db.session() as s:
            for (delivery_id, _), (status, error) in zip(items, results, strict=True):
                d = s.get(DeliveryRecord, delivery_id)
                assert d is not None
                d.attempts += 1
                d.last_status, d.last_error = status, error
                s.add(DeliveryAttempt(delivery_id=d.id, status=status, error=error, duration_ms=round(elapsed, 1)))
                if status is not None and is_delivered(status):
                    d.state = DeliveryState.DELIVERED
                    d.delivered_at = utcnow()
                elif d.attempts >= self.config.retry_max_attempts:
                    d.state = DeliveryState.FAILED
                    log.warning("delivery %d to %s failed for good: %s", d.id, dest, error or f"status 0x{status:04X}")
                else:
                    delay = backoff_s(d.attempts, self.config.retry_initial_s, self.config.retry_max_s)
                    d.next_attempt_at = utcnow() + timedelta(seconds=delay)
                    log.info(
                        "delivery %d to %s: %s; retry in %.0f s", d.id, dest, error or f"status 0x{status:04X}", delay
                    )


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

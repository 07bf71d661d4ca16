"""Outgoing associations: one kept open per destination and reused for every delivery pass.

Opening an association costs a TCP connect, A-ASSOCIATE negotiation (and a TLS handshake where used) -
more than storing three small result objects. :class:`Connections` keeps one established association per
destination, opens it again when the peer released or aborted it, widens it when a new SOP class has to
go, and releases it after ``keep_open_s`` seconds without use (a PACS may time idle associations out
itself: we then simply reconnect). Files are streamed from disk as they are encoded when the accepted
transfer syntax is the file's (pynetdicom's chunked sending), decoded and converted otherwise.

``send_files`` is the one-off form (``spinenode send``, the benchmark): open, store, release.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    Comprehensive3DSRStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from dicom_node.config import Destination

log = logging.getLogger(__name__)

# stream files from disk without decoding them (send_c_store given a path); process-wide pynetdicom setting
_config.STORE_SEND_CHUNKED_DATASET = True

# what the node sends (SEG, the measurement and evaluation SRs, the overlay): negotiated up front, so one
# association carries every output; another class widens the association when it first has to go
OUTPUT_SOP_CLASSES = frozenset({SegmentationStorage, Comprehensive3DSRStorage, SecondaryCaptureImageStorage})

# pynetdicom's network thread polls its socket every 1 ms (~10 % of a core per open association, taken from
# the model's forward pass on a 2-core machine); between passes a kept-open association polls this slowly,
# with its reactor paused. Up to this much delay on the first PDU of the next pass.
IDLE_POLL_S = 0.01
ACTIVE_POLL_S = 0.001  # pynetdicom's own setting

SendResult = tuple[int | None, str | None]  # (status or None, error or None), per file
TlsArgs = tuple[ssl.SSLContext, str]  # (context, server host name) as pynetdicom takes it


def no_delay(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: TCP_NODELAY on the association's socket (pynetdicom leaves Nagle on).

    A C-STORE goes out as two writes (command, then data set) before a read; with Nagle's algorithm and the
    peer's delayed ACK, a small object waits ~40 ms for nothing. dcmtk's tools do the same with TCP_NODELAY=1.
    """
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # the connection is already gone: nothing to tune
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass
class _Outgoing:
    """A file to store: its path and what its file meta says (read without the data set)."""

    path: str
    sop_class: str
    transfer_syntax: str

    @classmethod
    def read(cls, path: str) -> _Outgoing:
        meta = read_file_meta_info(path)
        if "MediaStorageSOPClassUID" in meta and "TransferSyntaxUID" in meta:
            return cls(path, str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
        ds = dcmread(path, stop_before_pixels=True)  # no file meta: sent decoded (transfer syntax unknown)
        return cls(path, str(ds.SOPClassUID), "")


@dataclass
class _Open:
    assoc: Association
    sop_classes: frozenset[str]
    last_used: float = field(default_factory=time.monotonic)
    active: bool = True  # False between passes (``_idle``): ``_resume`` before use


def _associate(
    ae_title: str, dest: Destination, sop_classes: frozenset[str], timeout: float, tls_args: TlsArgs | None
) -> Association:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.maximum_pdu_size = 0  # we accept any PDU size; the peer's limit applies to what we send
    for sop_class in sorted(sop_classes):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    return ae.associate(
        dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls_args, evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)]
    )


def _refused(assoc: Association) -> str:
    return "association rejected" if assoc.is_rejected else "association failed (peer unreachable?)"


def _hold_reactor(assoc: Association, limit_s: float = 1.0) -> None:
    """Make sure the association's reactor thread is paused before a request (pydicom/pynetdicom#875).

    ``send_c_store`` pauses the reactor by clearing a checkpoint and waiting for its ``_is_paused`` flag,
    but the flag can still read True from the reactor's previous turn, just before it goes on and takes
    the next message itself: a fast C-STORE response (loopback, TCP_NODELAY) is then logged as
    "unexpected" and the store waits for the DIMSE timeout. Here the reactor is seen running, then paused
    on the cleared checkpoint, before ``send_c_store`` (which clears it again and sets it when done).
    """
    checkpoint = getattr(assoc, "_reactor_checkpoint", None)
    if checkpoint is None or not hasattr(assoc, "_is_paused"):  # another pynetdicom: nothing to do
        return
    checkpoint.clear()
    seen_running = False
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if not assoc._is_paused:
            seen_running = True
        elif seen_running:
            return  # it ran, then paused: it is waiting on the cleared checkpoint
        time.sleep(0.0002)
    # never seen running within the limit: it has been waiting on the checkpoint all along


def _set_poll(assoc: Association, seconds: float) -> None:
    dul = getattr(assoc, "dul", None)
    if dul is not None and hasattr(dul, "_run_loop_delay"):
        dul._run_loop_delay = seconds


def _idle(assoc: Association) -> None:
    """Between passes: the reactor paused and the network thread polling slowly (``IDLE_POLL_S``)."""
    _hold_reactor(assoc)
    _set_poll(assoc, IDLE_POLL_S)


def _resume(assoc: Association) -> bool:
    """Before a pass on an idle association: True if it is still usable. An idle peer sends nothing, so
    anything it did send meanwhile (a release request, an abort, a closed connection) makes it stale."""
    _set_poll(assoc, ACTIVE_POLL_S)
    dul = getattr(assoc, "dul", None)
    try:
        stale = (
            not assoc.is_established
            or dul is None
            or not dul.is_alive()
            or dul.peek_next_pdu() is not None
            or (dul.socket is not None and dul.socket.ready)
        )
    except Exception:  # noqa: BLE001 - a broken socket or DUL: not usable
        stale = True
    checkpoint = getattr(assoc, "_reactor_checkpoint", None)
    if checkpoint is not None:
        checkpoint.set()  # the reactor runs again (send_c_store pauses it per request)
    return not stale


def _store(assoc: Association, item: _Outgoing) -> SendResult:
    """C-STORE one file on an established association."""
    streamable = any(
        c.abstract_syntax == item.sop_class and c.transfer_syntax[0] == item.transfer_syntax
        for c in assoc.accepted_contexts
    )
    try:
        # a path is streamed as encoded; a data set is re-encoded in the accepted transfer syntax
        payload = Path(item.path) if streamable else dcmread(item.path)
        _hold_reactor(assoc)  # last: send_c_store releases the reactor again when it is done
        rsp = assoc.send_c_store(payload)
    except Exception as exc:  # noqa: BLE001 - a peer or file problem for this file, recorded
        return None, f"{type(exc).__name__}: {exc}"
    if rsp is None or "Status" not in rsp:
        return None, "no response (timeout or abort)"
    return int(rsp.Status), str(rsp.get("ErrorComment", "")) or None


def send_files(
    ae_title: str,
    dest: Destination,
    paths: list[str],
    timeout: float = 30.0,
    tls_args: TlsArgs | None = None,
) -> list[SendResult]:
    """C-STORE ``paths`` to ``dest`` in one new association (over TLS with ``tls_args``), then release."""
    items = [_Outgoing.read(p) for p in paths]
    assoc = _associate(ae_title, dest, frozenset(i.sop_class for i in items), timeout, tls_args)
    if not assoc.is_established:
        return [(None, _refused(assoc))] * len(items)
    try:
        return [_store(assoc, item) for item in items]
    finally:
        if assoc.is_established:
            assoc.release()


class Connections:
    """Kept-open associations, one per destination (used by the sender thread; thread-safe)."""

    def __init__(
        self, ae_title: str, timeout: float, keep_open_s: float, sop_classes: frozenset[str] = OUTPUT_SOP_CLASSES
    ) -> None:
        self.ae_title = ae_title
        self.sop_classes = sop_classes
        self.timeout = timeout
        self.keep_open_s = keep_open_s
        self._open: dict[Destination, _Open] = {}
        self._lock = threading.Lock()
        self.opened = 0  # associations opened so far (the benchmark and tests read it)

    def send(self, dest: Destination, paths: list[str], tls_args: TlsArgs | None = None) -> list[SendResult]:
        """C-STORE ``paths`` to ``dest`` on its open association, opening (again) where needed.

        A file whose association broke under it is tried once more on a new association."""
        with self._lock:
            items = [_Outgoing.read(p) for p in paths]
            results: list[SendResult] = []
            refused: str | None = None  # the peer refused or is unreachable: not asked again in this call
            needed = frozenset(i.sop_class for i in items)
            for item in items:
                conn = refused or self._connection(dest, needed, tls_args)
                if isinstance(conn, str):
                    refused = conn
                    results.append((None, conn))
                    continue
                result = _store(conn.assoc, item)
                if result[0] is None and not conn.assoc.is_established:  # peer went away: once more
                    log.info("association to %s lost (%s); reconnecting", dest, result[1])
                    self._drop(dest)
                    conn = self._connection(dest, needed, tls_args)
                    if not isinstance(conn, str):
                        result = _store(conn.assoc, item)
                if not isinstance(conn, str):
                    conn.last_used = time.monotonic()
                results.append(result)
            if self.keep_open_s <= 0:
                self._drop(dest)
            elif dest in self._open:
                _idle(self._open[dest].assoc)
                self._open[dest].active = False
            return results

    def _connection(self, dest: Destination, needed: frozenset[str], tls_args: TlsArgs | None) -> _Open | str:
        """The open association to ``dest`` with contexts for ``needed`` SOP classes, or why there is none."""
        conn = self._open.get(dest)
        if conn is not None and conn.active and needed <= conn.sop_classes:
            return conn
        if conn is not None and needed <= conn.sop_classes and _resume(conn.assoc):
            conn.active = True
            return conn
        classes = needed | self.sop_classes | (conn.sop_classes if conn is not None else frozenset())
        self._drop(dest)
        assoc = _associate(self.ae_title, dest, classes, self.timeout, tls_args)
        if not assoc.is_established:
            return _refused(assoc)
        self.opened += 1
        log.debug("association to %s opened (%d SOP classes)", dest, len(classes))
        conn = _Open(assoc, classes)
        self._open[dest] = conn
        return conn

    def _drop(self, dest: Destination) -> None:
        conn = self._open.pop(dest, None)
        if conn is None:
            return
        healthy = _resume(conn.assoc)  # the reactor must run for the release
        if conn.assoc.is_established:
            try:
                if healthy:
                    conn.assoc.release()
                else:
                    conn.assoc.abort()
            except Exception:  # noqa: BLE001 - closing a broken association
                conn.assoc.abort()

    def close_idle(self) -> int:
        """Release the associations unused for ``keep_open_s`` seconds. Returns how many."""
        now = time.monotonic()
        with self._lock:
            idle = [d for d, c in self._open.items() if now - c.last_used >= self.keep_open_s]
            for dest in idle:
                self._drop(dest)
            return len(idle)

    def close_all(self) -> None:
        with self._lock:
            for dest in list(self._open):
                self._drop(dest)

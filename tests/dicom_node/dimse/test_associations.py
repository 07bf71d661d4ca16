"""Kept-open outgoing associations against a real dcmtk ``storescp``: reuse, reconnection after the peer
dropped the association, idle release, an unreachable peer asked once, and files streamed unchanged."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation

from dicom_node.config import Destination
from dicom_node.delivery.associations import Connections, send_files
from dicom_node.dimse.status import StoreStatus
from tests.conftest import StoreSCP, free_port

pytestmark = pytest.mark.slow


def _dest(scp: StoreSCP) -> Destination:
    return Destination.parse(scp.destination)


def test_one_association_carries_several_passes(storescp: StoreSCP, phantom_files: list[Path]) -> None:
    conns = Connections("SPINENODE", timeout=30, keep_open_s=60)
    try:
        first = conns.send(_dest(storescp), [str(phantom_files[0])])
        second = conns.send(_dest(storescp), [str(p) for p in phantom_files[1:]])
        assert first + second == [(StoreStatus.SUCCESS, None)] * 3
        assert conns.opened == 1
    finally:
        conns.close_all()
    received = storescp.wait_for_files(3)
    for sent in phantom_files:  # streamed from the file: the data set arrives as it was encoded
        got = next(dcmread(p) for p in received if dcmread(p).SOPInstanceUID == dcmread(sent).SOPInstanceUID)
        assert got.PixelData == dcmread(sent).PixelData


def test_reconnects_when_the_peer_dropped_the_association(phantom_files: list[Path]) -> None:
    """A PACS that times idle associations out (here: a pynetdicom SCP aborting them)."""
    stored: list[str] = []

    def on_store(event: evt.Event) -> int:
        stored.append(str(event.dataset.SOPInstanceUID))
        return int(StoreStatus.SUCCESS)

    ae = AE(ae_title="PACS")
    ae.add_supported_context(DigitalXRayImageStorageForPresentation, ALL_TRANSFER_SYNTAXES)
    server = ae.start_server(("127.0.0.1", free_port()), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    dest = Destination("PACS", "127.0.0.1", int(server.server_address[1]))
    conns = Connections("SPINENODE", timeout=30, keep_open_s=60)
    try:
        assert conns.send(dest, [str(phantom_files[0])]) == [(StoreStatus.SUCCESS, None)]
        for assoc in server.active_associations:
            assoc.abort()
        time.sleep(0.5)
        assert conns.send(dest, [str(phantom_files[1])]) == [(StoreStatus.SUCCESS, None)]
        assert conns.opened == 2
        assert len(stored) == 2
    finally:
        conns.close_all()
        server.shutdown()


def test_idle_association_is_released(storescp: StoreSCP, phantom_files: list[Path]) -> None:
    conns = Connections("SPINENODE", timeout=30, keep_open_s=0.2)
    conns.send(_dest(storescp), [str(phantom_files[0])])
    time.sleep(0.3)
    conns.close_idle()
    assert not conns._open
    assert conns.send(_dest(storescp), [str(phantom_files[1])]) == [(StoreStatus.SUCCESS, None)]
    assert conns.opened == 2
    conns.close_all()


def test_unreachable_peer_is_asked_once_per_pass(phantom_files: list[Path]) -> None:
    conns = Connections("SPINENODE", timeout=5, keep_open_s=60)
    dead = Destination("NOBODY", "127.0.0.1", free_port())
    results = conns.send(dead, [str(p) for p in phantom_files])
    assert [status for status, _ in results] == [None] * 3
    assert all("association failed" in (error or "") for _, error in results)
    assert conns.opened == 0


def test_one_off_send_files(storescp: StoreSCP, phantom_files: list[Path]) -> None:
    assert send_files("SPINENODE", _dest(storescp), [str(phantom_files[0])]) == [(StoreStatus.SUCCESS, None)]

"""Nothing lost: a real ``spinenode serve`` process killed with SIGKILL mid-batch, concurrent senders, and
no patient identity in the logs - through ``bench/reliability.py``, the harness users run by hand."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from bench import reliability
from dicom_node.config import Destination, NodeConfig
from dicom_node.roles.node import Node
from tests.conftest import TINY_MODEL, StoreSCP, free_port, require_tool, session_models, storescu

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("storescu")
    require_tool("storescp")


def _assert_nothing_lost(r: dict, acknowledged: int) -> None:
    assert r["sent"] == acknowledged and r["acknowledged"] == acknowledged, r
    assert r["processed"] == acknowledged and r["failed_jobs"] == 0, r
    assert r["delivered"] == 3 * acknowledged, r  # one SEG, one SR and one SC UID per source
    assert r["lost"] == 0 and r["conflicting"] == 0 and r["audit_mismatch"] == 0, r
    assert r["db_locked"] == 0, r
    assert r["phi_in_log"] == 0, r  # the phantoms' PatientName/PatientID never reach the log
    assert r["bad_file_modes"] == [], r  # database, instances and outputs 0600, folders 0700


def test_sigkill_mid_batch_then_restart_delivers_everything_once(tmp_path: Path) -> None:
    r = reliability.scenario_crash(tmp_path, TINY_MODEL, images=20, height=400, timeout=240)
    _assert_nothing_lost(r, 20)
    assert r["unfinished_at_kill"] > 0, r  # the kill did land mid-batch
    assert r["exit"] == 0, r  # the restarted node stops cleanly on SIGTERM


def test_concurrent_senders(tmp_path: Path) -> None:
    r = reliability.scenario_load(tmp_path, TINY_MODEL, senders=2, images=5, height=400, timeout=240)
    _assert_nothing_lost(r, 10)
    assert r["refused"] == {} and r["delivery_attempts"] >= 30, r


def test_logs_never_carry_patient_identity(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, storescp: StoreSCP
) -> None:
    """Debug-level logs of a whole job (received, refused, processed, delivered) name no patient."""
    name, pid = "Zyxwvut^Hygienetest", "HYGIENE-PID-99417"
    ds = reliability.phantom_to_dataset(reliability.make_phantom(840000, height=400), patient_id=pid, patient_name=name)
    good, bad = tmp_path / "good.dcm", tmp_path / "bad.dcm"
    ds.save_as(good, enforce_file_format=True)
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
    ds.PixelData = ds.PixelData[:100]
    ds.save_as(bad, enforce_file_format=True)
    cfg = NodeConfig(
        data_dir=tmp_path / "var",
        port=free_port(),
        bind="127.0.0.1",
        model=TINY_MODEL,
        destinations=(Destination.parse(storescp.destination),),
    )
    caplog.set_level(logging.DEBUG)
    node = Node.compose(cfg, session_models())
    node.start()
    try:
        sent = storescu(node.port, good, bad)
        assert "(Success)" in sent.stdout + sent.stderr and "CannotUnderstand" in sent.stdout + sent.stderr
        storescp.wait_for_files(3)
        deadline = time.monotonic() + 30
        while node.health()["deliveries"]["pending"] and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        node.stop()
    assert any(e.kind == "refused" for e in node.db.events())
    assert str(dcmread(good).PatientID) == pid
    text = caplog.text
    assert "job 1 done" in text
    database = b"".join(p.read_bytes() for p in (tmp_path / "var").glob("spinenode.db*"))
    for needle in (name, name.replace("^", " "), "Zyxwvut", "Hygienetest", pid):
        assert needle not in text
        assert needle.encode() not in database  # the audit database keeps UIDs, not identities

"""Orthanc as the PACS: a modality stores a DX into Orthanc, Orthanc routes it to SpineNode, the results
come back into the study.

One Orthanc (its own config, database and ports, DICOMweb plugin, the project's Lua routing script) and
one in-process SpineNode (tiny real model, destination Orthanc) serve the module. Two routing styles:

- Lua: ``config/orthanc/spinenode-route.lua`` forwards CR/DX received over DICOM (``SendToModality``);
- REST: ``POST /modalities/<node>/store`` with ``Asynchronous: true`` creates a store job; while the node
  is down Orthanc records the job as failed, and resubmitting it once the node is up delivers.

The study is then checked through Orthanc's REST API and QIDO-RS (DICOMweb plugin).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from dicom_node.audit.records import DeliveryState, InstanceRecord, JobRecord, JobState
from dicom_node.config import Destination, NodeConfig
from dicom_node.roles.node import Node
from tests.conftest import PROJECT, TINY_MODEL, free_port, require_tool, session_models, storescu, wait_until
from tests.orthanc import DICOMWEB_ROOT, ORTHANC_AE, Modality, OrthancServer

pytestmark = pytest.mark.slow  # a real Orthanc

LUA_ROUTE = PROJECT / "config" / "orthanc" / "spinenode-route.lua"
NODE_AE = "SPINENODE"
NODE_MODALITY = "spinenode"  # the name the Lua script sends to
LATE_MODALITY = "spinenode-late"  # a second node, declared while it is down
MODALITY_AE = "MODALITY"  # the calling AE of the "modality" (dcmtk storescu)
LOOPBACK = "127.0.0.1"
RESULT_TIMEOUT_S = 120.0

DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
STUDY_AFTER_ROUND_TRIP = {"DX": DX_PRESENTATION, "SEG": SEG, "SR": COMPREHENSIVE_3D_SR, "OT": SECONDARY_CAPTURE}
QIDO_MODALITY = "00080060"
QIDO_SERIES_UID = "0020000E"


def _node_config(data_dir: Path, port: int, orthanc_dicom_port: int) -> NodeConfig:
    return NodeConfig(
        ae_title=NODE_AE,
        data_dir=data_dir,
        port=port,
        bind=LOOPBACK,
        model=TINY_MODEL,
        destinations=(Destination(ORTHANC_AE, LOOPBACK, orthanc_dicom_port),),
        allowed_calling_aes=(ORTHANC_AE,),  # only the PACS may send to the node
        retry_initial_s=0.5,
        retry_max_s=2.0,
    )


@pytest.fixture(scope="module")
def orthanc_dicom_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, models_root: Path, orthanc_dicom_port: int) -> Iterator[Node]:
    os.environ["SPINENODE_MODELS_DIR"] = str(models_root)
    n = Node.compose(
        _node_config(tmp_path_factory.mktemp("node-var"), free_port(), orthanc_dicom_port), session_models()
    )
    n.start()
    yield n
    n.stop()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, node: Node, orthanc_dicom_port: int) -> Iterator[OrthancServer]:
    require_tool("storescu")
    server = OrthancServer(
        tmp_path_factory.mktemp("orthanc"),
        modalities={NODE_MODALITY: Modality(NODE_AE, LOOPBACK, node.port)},
        lua_scripts=(LUA_ROUTE,),
        dicom_port=orthanc_dicom_port,
    )
    server.start()
    yield server
    assert server.stop() == 0, server.log_tail()  # a clean shutdown


def series_by_modality(orthanc: OrthancServer, study_uid: str) -> dict[str, list[dict[str, object]]]:
    """Orthanc's series of the study, grouped by Modality (``/studies/<id>/series``)."""
    study_id = orthanc.study_id(study_uid)
    if study_id is None:
        return {}
    grouped: dict[str, list[dict[str, object]]] = {}
    for series in orthanc.get(f"/studies/{study_id}/series"):
        grouped.setdefault(series["MainDicomTags"].get("Modality", ""), []).append(series)
    return grouped


def assert_round_trip(orthanc: OrthancServer, source: Path) -> None:
    """The study holds the DX and the node's SEG, SR and SC, by REST and by QIDO-RS."""
    ds = dcmread(source)
    study_uid = str(ds.StudyInstanceUID)
    wait_until(
        lambda: set(series_by_modality(orthanc, study_uid)) >= set(STUDY_AFTER_ROUND_TRIP),
        what="SEG, SR and SC series in Orthanc",
    )
    grouped = series_by_modality(orthanc, study_uid)
    assert set(grouped) == set(STUDY_AFTER_ROUND_TRIP), grouped.keys()
    for modality, sop_class in STUDY_AFTER_ROUND_TRIP.items():
        [series] = grouped[modality]
        [instance_id] = series["Instances"]  # type: ignore[misc]
        tags = orthanc.get(f"/instances/{instance_id}/tags?simplify")
        assert tags["SOPClassUID"] == sop_class, modality
        assert tags["StudyInstanceUID"] == study_uid
        assert tags["PatientID"] == ds.PatientID
    qido = orthanc.get(f"{DICOMWEB_ROOT}studies/{study_uid}/series")
    qido_modalities = {s[QIDO_MODALITY]["Value"][0] for s in qido}
    assert qido_modalities == set(STUDY_AFTER_ROUND_TRIP)
    assert len({s[QIDO_SERIES_UID]["Value"][0] for s in qido}) == len(STUDY_AFTER_ROUND_TRIP)


def node_instances(node: Node, study_uid: str) -> list[InstanceRecord]:
    with node.db.session() as s:
        return list(s.scalars(select(InstanceRecord).where(InstanceRecord.study_instance_uid == study_uid)))


def all_delivered(node: Node) -> bool:
    return node.health()["deliveries"] == {"pending": 0, "committing": 0, "failed": 0}


def test_orthanc_checks_the_called_ae(orthanc: OrthancServer) -> None:
    echoscu = require_tool("echoscu")
    env = {**os.environ, "TCP_NODELAY": "1"}

    def echo(called: str) -> int:
        cmd = [echoscu, "-aet", MODALITY_AE, "-aec", called, LOOPBACK, str(orthanc.dicom_port)]
        return subprocess.run(cmd, capture_output=True, timeout=30, env=env).returncode

    assert echo("ANY-SCP") != 0  # dcmtk's default called AE is refused: always pass -aec ORTHANC
    assert echo(ORTHANC_AE) == 0


def test_lua_routes_dx_to_node_and_results_return(
    orthanc: OrthancServer, node: Node, phantom_files: list[Path]
) -> None:
    source = phantom_files[0]
    proc = storescu(orthanc.dicom_port, source, called=ORTHANC_AE, calling=MODALITY_AE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_round_trip(orthanc, source)

    study_uid = str(dcmread(source).StudyInstanceUID)
    wait_until(lambda: all_delivered(node), what="node deliveries")
    [instance] = node_instances(node, study_uid)  # the DX only: the results were not routed back (no loop)
    assert instance.sop_class_uid == DX_PRESENTATION
    with node.db.session() as s:
        job = s.scalar(select(JobRecord).where(JobRecord.instance_id == instance.id))
        assert job is not None and job.state == JobState.DONE
        assert {d.state for o in job.outputs for d in o.deliveries} == {DeliveryState.DELIVERED}


def test_rest_store_job_fails_while_node_down_then_resubmitted(
    orthanc: OrthancServer, node: Node, phantom_files: list[Path], tmp_path: Path, models_root: Path
) -> None:
    source = phantom_files[1]
    late_port = free_port()
    orthanc.put(f"/modalities/{LATE_MODALITY}", Modality(NODE_AE, LOOPBACK, late_port).to_json())
    instance_id = orthanc.upload(source)  # REST upload: the Lua script leaves it alone

    created = orthanc.post(f"/modalities/{LATE_MODALITY}/store", {"Resources": [instance_id], "Asynchronous": True})
    failed = orthanc.wait_for_job(created["ID"])
    assert failed["State"] == "Failure", failed  # the node is down: Orthanc records the failed job
    assert failed["ErrorCode"] != 0 and failed["ErrorDescription"]

    late = Node.compose(_node_config(tmp_path / "late-var", late_port, orthanc.dicom_port), session_models())
    late.start()
    try:
        orthanc.post(f"/jobs/{created['ID']}/resubmit")
        assert orthanc.wait_for_job(created["ID"])["State"] == "Success"
        assert_round_trip(orthanc, source)
        wait_until(lambda: all_delivered(late), what="late node deliveries")
    finally:
        late.stop()
    assert node_instances(node, str(dcmread(source).StudyInstanceUID)) == []  # never routed by Lua

"""DICOMweb both ways with a real Orthanc (DICOMweb plugin), HTTP authentication on both sides.

- in: Orthanc's DICOMweb client (``POST /dicom-web/servers/spinenode/stow``, a bearer token in its
  ``HttpHeaders``) stores a DX into the node's STOW-RS endpoint; a CT is refused per instance (Orthanc
  reports the job failed, the node audits the refusal);
- out: the node's results (SEG, SR, SC) go to Orthanc's ``/dicom-web/studies`` as a
  ``stow+http://`` destination with basic authentication, and land in the radiograph's study;
- a wrong password fails the deliveries at once (401 will not succeed on retry), with the reason;
- an Orthanc outage with a node restart in the middle: the deliveries wait in the database, retried with
  backoff, and are delivered by the restarted node once Orthanc is back.
"""

from __future__ import annotations

import urllib.error
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from sqlalchemy import select

from dicom_node.audit.records import (
    AssociationRecord,
    DeliveryRecord,
    DeliveryState,
    InstanceRecord,
    OutputKind,
    OutputRecord,
)
from dicom_node.config import NodeConfig, StowDestination
from dicom_node.config.web import HttpToken, StowSettings
from dicom_node.dicomweb.message import multipart_body, new_boundary, request_content_type
from dicom_node.http.passwords import new_token, token_sha256
from dicom_node.http.server import HttpServer
from dicom_node.roles.node import Node
from dicom_node.storage import dataset_bytes
from inference.registry import ModelRegistry
from tests.conftest import TINY_MODEL, free_port, session_models, wait_until
from tests.orthanc import DICOMWEB_ROOT, OrthancServer

pytestmark = pytest.mark.slow

LOOPBACK = "127.0.0.1"
ORTHANC_USER = ("spinenode", "orthanc-secret")  # Orthanc's RegisteredUsers: the node's credentials there
TOKEN_NAME, TOKEN = "orthanc", new_token()  # the node's API token for Orthanc's DICOMweb client
NODE_SERVER = "spinenode"  # the node's name in Orthanc's DicomWeb.Servers
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
QIDO_SOP_INSTANCE = "00080018"


def node_config(data_dir: Path, orthanc: OrthancServer, password: str = ORTHANC_USER[1]) -> NodeConfig:
    dest = StowDestination.parse(f"stow+{orthanc.base_url}{DICOMWEB_ROOT}")
    return NodeConfig(
        data_dir=data_dir,
        port=free_port(),
        bind=LOOPBACK,
        model=TINY_MODEL,
        destinations=(dest,),
        stow_settings=(StowSettings(dest, "basic", ORTHANC_USER[0], password),),
        http_tokens=(HttpToken(TOKEN_NAME, token_sha256(TOKEN)),),
        retry_initial_s=0.5,
        retry_max_s=1.0,
    )


@pytest.fixture(scope="module")
def http_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, http_port: int) -> Iterator[OrthancServer]:
    server = OrthancServer(
        tmp_path_factory.mktemp("orthanc-dicomweb"),
        user=ORTHANC_USER,
        dicomweb_servers={
            NODE_SERVER: {
                "Url": f"http://{LOOPBACK}:{http_port}/dicom-web/",
                "HttpHeaders": {"Authorization": f"Bearer {TOKEN}"},
            }
        },
    )
    server.start()
    yield server
    assert server.stop() == 0, server.log_tail()


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, orthanc: OrthancServer, http_port: int, models_root: Path
) -> Iterator[Node]:
    n = Node.compose(node_config(tmp_path_factory.mktemp("node-dicomweb"), orthanc), ModelRegistry(models_root))
    n.start()
    http = HttpServer(n, LOOPBACK, http_port)
    http.start()
    yield n
    http.stop()
    n.stop()


def deliveries(node: Node, study_uid: str) -> list[DeliveryRecord]:
    with node.db.session() as s:
        q = (
            select(DeliveryRecord)
            .join(OutputRecord, DeliveryRecord.output_id == OutputRecord.id)
            .where(OutputRecord.path.contains(study_uid))
        )
        rows = list(s.scalars(q))
        for d in rows:
            _ = d.attempt_log  # loaded while the session is open
        return rows


def qido_instances(orthanc: OrthancServer, study_uid: str) -> set[str]:
    """SOP Instance UIDs of the study in Orthanc, by QIDO-RS."""
    try:
        found = orthanc.get(f"{DICOMWEB_ROOT}studies/{study_uid}/instances") or []
    except urllib.error.HTTPError:
        return set()
    return {i[QIDO_SOP_INSTANCE]["Value"][0] for i in found}


def assert_results_in_study(orthanc: OrthancServer, node: Node, source: Path) -> None:
    """Orthanc's study holds the radiograph and every output the node recorded for it (at least SR and SC;
    a SEG where the model found something), delivered by STOW-RS."""
    ds = dcmread(source)
    study_uid = str(ds.StudyInstanceUID)
    with node.db.session() as s:
        outputs = {o.sop_instance_uid: o.kind for o in s.scalars(select(OutputRecord)) if study_uid in o.path}
    assert {OutputKind.SR, OutputKind.SC} <= set(outputs.values())
    wait_until(lambda: qido_instances(orthanc, study_uid) == {str(ds.SOPInstanceUID), *outputs}, what="study")


def receive(node: Node, source: Path) -> None:
    """A radiograph into the node's receiver, as its C-STORE and STOW-RS handlers hand one over."""
    ds = dcmread(source)
    node.receiver.receive(ds, source.read_bytes(), str(ds.SOPClassUID), node.config.ae_title, "", None)


def test_orthanc_stows_into_the_node_and_the_results_stow_back(
    orthanc: OrthancServer, node: Node, phantom_files: list[Path]
) -> None:
    source = phantom_files[0]
    study_uid = str(dcmread(source).StudyInstanceUID)
    instance_id = orthanc.upload(source)
    answer = orthanc.post(f"/dicom-web/servers/{NODE_SERVER}/stow", {"Resources": [instance_id]})
    assert answer["InstancesCount"] == "1"

    wait_until(lambda: deliveries(node, study_uid), what="outputs")
    wait_until(lambda: all(d.state == DeliveryState.DELIVERED for d in deliveries(node, study_uid)), what="delivery")
    assert_results_in_study(orthanc, node, source)
    sent = deliveries(node, study_uid)
    for d in sent:
        assert d.destination == f"stow+{orthanc.base_url}/dicom-web"
        assert d.attempts == 1 and d.last_status == 0 and d.last_error is None
        assert [a.status for a in d.attempt_log] == [0]
    with node.db.session() as s:
        inst = s.scalar(select(InstanceRecord).where(InstanceRecord.study_instance_uid == study_uid))
        assert inst is not None
        assoc = s.get(AssociationRecord, inst.association_id)
        assert assoc is not None and (assoc.calling_ae, assoc.peer_address, assoc.reason) == (
            TOKEN_NAME,
            LOOPBACK,
            "STOW-RS",
        )


def test_a_refused_instance_fails_orthancs_stow_and_is_audited(
    orthanc: OrthancServer, node: Node, phantom_files: list[Path], tmp_path: Path
) -> None:
    ds = dcmread(phantom_files[1])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.10.2.1"
    ct = tmp_path / "ct.dcm"
    ct.write_bytes(dataset_bytes(ds))
    instance_id = orthanc.upload(ct)
    with pytest.raises(urllib.error.HTTPError):  # the node answered 409: Orthanc's STOW fails
        orthanc.post(f"/dicom-web/servers/{NODE_SERVER}/stow", {"Resources": [instance_id]})
    [event] = [e for e in node.db.events("refused") if e.sop_instance_uid == ds.SOPInstanceUID]
    assert event.status == 0x0122 and event.detail == f"SOP class {CT_IMAGE} not accepted"


def test_orthanc_refuses_stow_without_the_right_password(orthanc: OrthancServer, phantom_files: list[Path]) -> None:
    boundary = new_boundary()
    headers = {"Content-Type": request_content_type(boundary)}
    body = multipart_body([phantom_files[2].read_bytes()], boundary)
    rsp = httpx.post(f"{orthanc.base_url}/dicom-web/studies", content=body, headers=headers, auth=("spinenode", "x"))
    assert rsp.status_code == 401


def test_wrong_credentials_fail_the_delivery_at_once_with_the_reason(
    orthanc: OrthancServer, phantom_files: list[Path], tmp_path: Path
) -> None:
    n = Node.compose(node_config(tmp_path / "var", orthanc, password="wrong"), session_models())
    n.start()
    try:
        receive(n, phantom_files[2])
        study_uid = str(dcmread(phantom_files[2]).StudyInstanceUID)
        wait_until(lambda: deliveries(n, study_uid), what="deliveries")
        wait_until(lambda: all(d.state == DeliveryState.FAILED for d in deliveries(n, study_uid)), what="failure")
        for d in deliveries(n, study_uid):
            assert d.attempts == 1  # no retry: a 401 will not change
            assert d.last_error is not None
            assert d.last_error.startswith("HTTP 401 Unauthorized from stow+http://")
            assert "check the credentials in [[dicomweb.destinations]]; will not succeed on retry" in d.last_error
            assert "wrong" not in d.last_error  # never the password
        assert n.health()["status"] == "degraded"
    finally:
        n.stop()


def test_outage_and_restart_in_the_middle_only_delay_the_deliveries(
    tmp_path_factory: pytest.TempPathFactory, phantom_files: list[Path]
) -> None:
    orthanc = OrthancServer(tmp_path_factory.mktemp("orthanc-outage"), user=ORTHANC_USER).start()
    data_dir = tmp_path_factory.mktemp("node-outage")
    config = node_config(data_dir, orthanc)
    source = phantom_files[1]
    study_uid = str(dcmread(source).StudyInstanceUID)
    orthanc.stop()  # the destination is down
    first = Node.compose(config, session_models())
    first.start()
    try:
        receive(first, source)
        wait_until(
            lambda: (ds := deliveries(first, study_uid)) and all(d.attempts >= 2 for d in ds),
            what="failed attempts",
        )
    finally:
        first.stop()  # the restart in the middle: nothing delivered yet
    waiting = deliveries(first, study_uid)
    assert {d.state for d in waiting} == {DeliveryState.PENDING}
    assert all("ConnectError" in (d.last_error or "") for d in waiting)

    orthanc.start()
    orthanc.upload(source)  # the radiograph itself, for the study check below
    second = Node.compose(replace(config, port=free_port()), session_models())
    second.start()
    try:
        wait_until(
            lambda: all(d.state == DeliveryState.DELIVERED for d in deliveries(second, study_uid)), what="delivery"
        )
        for d in deliveries(second, study_uid):
            statuses = [a.status for a in d.attempt_log]
            assert statuses[-1] == 0 and None in statuses[:-1]  # failed attempts, then the delivery
        assert_results_in_study(orthanc, second, source)
    finally:
        second.stop()
        assert orthanc.stop() == 0

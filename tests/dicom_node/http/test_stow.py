"""STOW-RS for real, against the node's own HTTP server (no inference workers: the intake is under test).

- the endpoint: radiographs stored durably and queued as C-STORE would, every other part refused with
  its own failure reason (200 / 202 / 409), the request audited as an association with the peer;
- the client (the sender's transport) over HTTPS: certificate verified against the configured CA,
  bearer token, 401 and 404 as permanent failures, per-instance failure reasons.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from sqlalchemy import select

from dicom_node.audit.records import AssociationRecord, InstanceRecord, JobRecord, JobState
from dicom_node.config import NodeConfig
from dicom_node.config.web import HttpToken, StowDestination, StowSettings
from dicom_node.dicomweb.client import Outcome, StowClient
from dicom_node.dicomweb.message import (
    TAG_ERROR_COMMENT,
    TAG_FAILED_SOP_SEQUENCE,
    TAG_FAILURE_REASON,
    TAG_REFERENCED_SOP_SEQUENCE,
    TAG_SOP_INSTANCE,
    multipart_body,
    new_boundary,
    request_content_type,
)
from dicom_node.http.passwords import new_token, token_sha256
from dicom_node.http.server import HttpServer
from dicom_node.roles.node import Node
from dicom_node.storage import dataset_bytes
from tests.conftest import free_port, require_tool, session_models

pytestmark = pytest.mark.slow

TOKEN_NAME, TOKEN = "pacs", new_token()
LOOPBACK = "127.0.0.1"
INSTANCE_LIMIT = 2 * 2**20  # the test server's per-instance limit
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"  # a SOP class the node does not take


@dataclass
class Served:
    node: Node
    http: HttpServer

    def post(self, parts: list[bytes], path: str = "/dicom-web/studies", **headers: str) -> httpx.Response:
        boundary = new_boundary()
        headers = {"Content-Type": request_content_type(boundary), "Authorization": f"Bearer {TOKEN}", **headers}
        return httpx.post(self.http.url.rstrip("/") + path, content=multipart_body(parts, boundary), headers=headers)


def _node(data_dir: Path, **extra: object) -> Node:
    config = NodeConfig(
        data_dir=data_dir,
        port=free_port(),
        bind=LOOPBACK,
        workers=0,
        http_tokens=(HttpToken(TOKEN_NAME, token_sha256(TOKEN)),),
        **extra,  # type: ignore[arg-type]
    )
    node = Node.compose(config, session_models())
    node.start(preload=False)
    return node


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    node = _node(tmp_path_factory.mktemp("stow-var"))
    http = HttpServer(node, LOOPBACK, free_port(), max_upload_bytes=INSTANCE_LIMIT)
    http.start()
    yield Served(node, http)
    http.stop()
    node.stop()


def _variant(source: Path, **changes: str) -> bytes:
    """The phantom with other attributes (and SOP class in the file meta, when changed)."""
    ds = dcmread(source)
    for keyword, value in changes.items():
        if keyword == "delete":
            delattr(ds, value)
            continue
        setattr(ds, keyword, value)
        if keyword == "SOPClassUID":
            ds.file_meta.MediaStorageSOPClassUID = value
        if keyword == "SOPInstanceUID":
            ds.file_meta.MediaStorageSOPInstanceUID = value
    return dataset_bytes(ds)


def _by_uid(body: dict[str, object], tag: str) -> dict[str, dict[str, object]]:
    items = (body.get(tag) or {}).get("Value", [])  # type: ignore[union-attr]
    return {i.get(TAG_SOP_INSTANCE, {}).get("Value", [""])[0]: i for i in items}


def _reason(item: dict[str, object]) -> tuple[int, str]:
    return item[TAG_FAILURE_REASON]["Value"][0], item[TAG_ERROR_COMMENT]["Value"][0]  # type: ignore[index]


def test_stow_stores_radiographs_like_c_store_and_refuses_the_rest(served: Served, phantom_files: list[Path]) -> None:
    good = phantom_files[0].read_bytes()
    ct = _variant(phantom_files[1], SOPClassUID=CT_IMAGE, SOPInstanceUID="1.2.826.0.1.3680043.10.1.1")
    no_pixels = _variant(phantom_files[2], SOPInstanceUID="1.2.826.0.1.3680043.10.1.2", delete="PixelData")
    rsp = served.post([good, b"not dicom at all", ct, no_pixels, b"\0" * (INSTANCE_LIMIT + 1)])
    assert rsp.status_code == 202, rsp.text  # some stored, some refused
    assert rsp.headers["content-type"] == "application/dicom+json"
    body = rsp.json()
    source = dcmread(phantom_files[0])
    assert list(_by_uid(body, TAG_REFERENCED_SOP_SEQUENCE)) == [source.SOPInstanceUID]
    failed = body[TAG_FAILED_SOP_SEQUENCE]["Value"]
    assert len(failed) == 4
    by_uid = _by_uid(body, TAG_FAILED_SOP_SEQUENCE)
    assert _reason(by_uid["1.2.826.0.1.3680043.10.1.1"]) == (0x0122, f"SOP class {CT_IMAGE} not accepted")
    assert _reason(by_uid["1.2.826.0.1.3680043.10.1.2"]) == (0xC000, "no pixel data")  # the receiver's check
    garbage, too_large = (_reason(i) for i in failed if TAG_SOP_INSTANCE not in i)
    assert garbage[0] == 0xC000 and garbage[1].startswith("not a DICOM Part 10 file")
    assert too_large == (0xA700, "instance larger than 2 MiB")

    node = served.node
    path = node.storage.instance_path(source.StudyInstanceUID, source.SOPInstanceUID)
    assert path.read_bytes() == good  # on disk, byte for byte, before the answer
    with node.db.session() as s:
        inst = s.scalar(select(InstanceRecord).where(InstanceRecord.sop_instance_uid == source.SOPInstanceUID))
        assert inst is not None and inst.path == str(path)
        job = s.scalar(select(JobRecord).where(JobRecord.instance_id == inst.id))
        assert job is not None and job.state == JobState.QUEUED
        assoc = s.get(AssociationRecord, inst.association_id)
        assert assoc is not None
        assert (assoc.calling_ae, assoc.peer_address, assoc.reason) == (TOKEN_NAME, LOOPBACK, "STOW-RS")
        assert assoc.ended_at is not None
    refused = [e for e in node.db.events("refused") if e.association_id == inst.association_id]
    assert sorted(e.status for e in refused) == [0x0122, 0xA700, 0xC000, 0xC000]


def test_stow_answers_409_when_nothing_is_stored_and_200_for_a_resend(
    served: Served, phantom_files: list[Path]
) -> None:
    other_study = served.post([phantom_files[1].read_bytes()], path="/dicom-web/studies/1.2.3.4")
    assert other_study.status_code == 409
    [item] = other_study.json()[TAG_FAILED_SOP_SEQUENCE]["Value"]
    assert _reason(item) == (0xC000, "StudyInstanceUID is not the study of the request URL")

    study = str(dcmread(phantom_files[1]).StudyInstanceUID)
    first = served.post([phantom_files[1].read_bytes()], path=f"/dicom-web/studies/{study}")
    again = served.post([phantom_files[1].read_bytes()])
    assert (first.status_code, again.status_code) == (200, 200)  # a re-send is acknowledged ...
    with served.node.db.session() as s:
        [inst] = s.scalars(select(InstanceRecord).where(InstanceRecord.study_instance_uid == study))
        assert inst.times_received == 2
        assert len(list(s.scalars(select(JobRecord).where(JobRecord.instance_id == inst.id)))) == 1  # ... once


def test_stow_refuses_while_the_node_stops_and_wrong_requests(served: Served, phantom_files: list[Path]) -> None:
    served.node.receiver.accepting = False
    try:
        rsp = served.post([phantom_files[2].read_bytes()])
    finally:
        served.node.receiver.accepting = True
    assert rsp.status_code == 409
    assert _reason(rsp.json()[TAG_FAILED_SOP_SEQUENCE]["Value"][0]) == (0xA700, "node is shutting down")

    url = served.http.url + "dicom-web/studies"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    json_metadata = httpx.post(url, content=b"{}", headers={**auth, "Content-Type": "application/dicom+json"})
    assert json_metadata.status_code == 415
    xml_parts = 'multipart/related; type="application/dicom+xml"; boundary=x'
    assert httpx.post(url, content=b"--x--\r\n", headers={**auth, "Content-Type": xml_parts}).status_code == 415
    empty = httpx.post(url, content=b"--x--\r\n", headers={**auth, "Content-Type": request_content_type("x")})
    assert empty.status_code == 400 and "no instance" in empty.json()["detail"]


# --- the client, over HTTPS -----------------------------------------------------------------------------
def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([require_tool("openssl"), *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def https_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Path]]:
    d = tmp_path_factory.mktemp("https-pki")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=SpineNode test CA", cwd=d,
    )  # fmt: skip
    (d / "node.ext").write_text("subjectAltName = DNS:localhost, IP:127.0.0.1\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=x", cwd=d)
    _openssl(
        "x509", "-req", "-in", "node.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out",
        "node.crt", "-days", "2", "-extfile", "node.ext", cwd=d,
    )  # fmt: skip
    node = _node(tmp_path_factory.mktemp("https-var"), http_tls_cert=d / "node.crt", http_tls_key=d / "node.key")
    http = HttpServer(node, LOOPBACK, free_port())
    http.start()
    assert http.url.startswith("https://")
    yield Served(node, http), d / "ca.crt"
    http.stop()
    node.stop()


def test_client_verifies_tls_and_sends_with_a_bearer_token(
    https_node: tuple[Served, Path], phantom_files: list[Path], tmp_path: Path
) -> None:
    served, ca = https_node
    dest = StowDestination.parse(f"stow+{served.http.url}dicom-web")
    client = StowClient()
    try:
        [unverified] = client.send(StowSettings(dest, "bearer", token=TOKEN), [str(phantom_files[0])])
        assert unverified.status is None and not unverified.permanent  # the system CAs do not know ours
        assert "CERTIFICATE_VERIFY_FAILED" in (unverified.error or "")

        ct = tmp_path / "ct.dcm"
        ct.write_bytes(_variant(phantom_files[1], SOPClassUID=CT_IMAGE, SOPInstanceUID="1.2.826.0.1.3680043.10.1.3"))
        settings = StowSettings(dest, "bearer", token=TOKEN, ca=ca)
        stored, refused = client.send(settings, [str(phantom_files[0]), str(ct)])
        assert stored == Outcome(0)
        assert refused.status == 0x0122 and refused.permanent
        assert refused.error == f"STOW-RS failure reason 0x0122: SOP class {CT_IMAGE} not accepted"

        [wrong_token] = client.send(StowSettings(dest, "bearer", token="nope", ca=ca), [str(phantom_files[0])])
        assert wrong_token.permanent and wrong_token.status is None
        assert (wrong_token.error or "").startswith(f"HTTP 401 Unauthorized from {dest}: check the credentials")
        assert "will not succeed on retry" in (wrong_token.error or "")

        wrong_path = StowDestination.parse(f"stow+{served.http.url}nothing-here")
        [not_found] = client.send(StowSettings(wrong_path, "bearer", token=TOKEN, ca=ca), [str(phantom_files[0])])
        assert not_found.permanent and (not_found.error or "").startswith("HTTP 404 Not Found")
    finally:
        client.close()
    with served.node.db.session() as s:
        uid = str(dcmread(phantom_files[0]).SOPInstanceUID)
        assert s.scalar(select(InstanceRecord).where(InstanceRecord.sop_instance_uid == uid)) is not None

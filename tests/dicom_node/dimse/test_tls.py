"""DICOM over TLS with a throwaway CA made by ``openssl``: dcmtk peers against the SCP (TLS and mutual
TLS), a plain-TCP client refused, and the sender delivering to a dcmtk ``storescp +tls`` destination."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from dicom_node.audit.records import AuditDB, InstanceRecord
from dicom_node.config import ConfigError, Destination, NodeConfig, load_config
from dicom_node.delivery.associations import send_files
from dicom_node.dimse.scp import Receiver
from dicom_node.dimse.tls import client_args
from dicom_node.storage import Storage
from tests.conftest import free_port, require_tool, wait_port

pytestmark = pytest.mark.slow


@dataclass
class PKI:
    ca: Path
    node_cert: Path
    node_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # signed by another CA
    rogue_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([require_tool("openssl"), *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _leaf(d: Path, name: str, ca: str, cn: str) -> None:
    (d / f"{name}.ext").write_text("subjectAltName = DNS:localhost, IP:127.0.0.1\n")
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", cn, cwd=d
    )
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
        "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "rogueca"):
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
            "-days", "2", "-subj", f"/CN=SpineNode test {ca}", cwd=d,
        )  # fmt: skip
    _leaf(d, "node", "ca", "/CN=localhost")
    _leaf(d, "client", "ca", "/CN=modality")
    _leaf(d, "rogue", "rogueca", "/CN=rogue")
    return PKI(
        d / "ca.crt",
        d / "node.crt",
        d / "node.key",
        d / "client.crt",
        d / "client.key",
        d / "rogue.crt",
        d / "rogue.key",
    )


def _receiver(tmp: Path, pki: PKI, require_client_cert: bool) -> Receiver:
    cfg = NodeConfig(
        data_dir=tmp / "var",
        bind="127.0.0.1",
        port=free_port(),
        tls_cert=pki.node_cert,
        tls_key=pki.node_key,
        tls_ca=pki.ca,
        tls_require_client_cert=require_client_cert,
    )
    return Receiver(cfg, AuditDB(cfg.db_path), Storage(cfg.data_dir), on_job=lambda _job_id: None)


@pytest.fixture
def tls_scp(tmp_path: Path, pki: PKI) -> Iterator[Receiver]:
    r = _receiver(tmp_path, pki, require_client_cert=False)
    r.port = r.start()  # type: ignore[attr-defined]
    yield r
    r.stop()


@pytest.fixture
def mtls_scp(tmp_path: Path, pki: PKI) -> Iterator[Receiver]:
    r = _receiver(tmp_path, pki, require_client_cert=True)
    r.port = r.start()  # type: ignore[attr-defined]
    yield r
    r.stop()


def _dcmtk(tool: str, port: int, *options: str, files: tuple[Path, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool(tool), "-aet", "TLSSCU", "-aec", "SPINENODE", *options, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_tls_scp_accepts_dcmtk_over_tls_and_refuses_plain_tcp(
    tls_scp: Receiver, pki: PKI, phantom_files: list[Path]
) -> None:
    port = tls_scp.port  # type: ignore[attr-defined]
    silent = socket.create_connection(("127.0.0.1", port))  # connects and never starts the handshake
    assert _dcmtk("echoscu", port, "+tla", "+cf", str(pki.ca)).returncode == 0  # no client certificate needed
    silent.close()
    sent = _dcmtk("storescu", port, "+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca),
                  files=(phantom_files[0],))  # fmt: skip
    assert sent.returncode == 0, sent.stdout + sent.stderr
    with tls_scp.db.session() as s:
        assert s.query(InstanceRecord).count() == 1
    assert _dcmtk("echoscu", port).returncode != 0  # plain TCP against the TLS port
    assert _dcmtk("echoscu", port, "+tla", "+cf", str(pki.rogue_cert)).returncode != 0  # our cert is not trusted
    assert _dcmtk("echoscu", port, "+tla", "+cf", str(pki.ca)).returncode == 0  # still serving


def test_mutual_tls_requires_a_client_certificate_of_our_ca(mtls_scp: Receiver, pki: PKI) -> None:
    port = mtls_scp.port  # type: ignore[attr-defined]
    ok = _dcmtk("echoscu", port, "+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert _dcmtk("echoscu", port, "+tla", "+cf", str(pki.ca)).returncode != 0  # no certificate
    rogue = _dcmtk("echoscu", port, "+tls", str(pki.rogue_key), str(pki.rogue_cert), "+cf", str(pki.ca))
    assert rogue.returncode != 0  # a certificate from another CA
    assert _dcmtk("echoscu", port).returncode != 0


def test_sender_delivers_over_mutual_tls_to_storescp(tmp_path: Path, pki: PKI, phantom_files: list[Path]) -> None:
    port = free_port()
    folder = tmp_path / "received"
    folder.mkdir()
    dest = subprocess.Popen(
        [
            require_tool("storescp"),
            "--aetitle",
            "TLSDEST",
            "-od",
            str(folder),
            "+tls",
            str(pki.client_key),
            str(pki.client_cert),
            "+cf",
            str(pki.ca),
            str(port),
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    try:
        wait_port(port)
        target = Destination("TLSDEST", "127.0.0.1", port)
        cfg = NodeConfig(tls_cert=pki.node_cert, tls_key=pki.node_key, tls_ca=pki.ca, tls_destinations=(str(target),))
        args = client_args(cfg, target)
        assert args is not None and client_args(replace(cfg, tls_destinations=()), target) is None
        assert send_files("SPINENODE", target, [str(phantom_files[0])], 30, args) == [(0, None)]
        assert len(list(folder.iterdir())) == 1
        plain = send_files("SPINENODE", target, [str(phantom_files[0])], 10)  # the destination needs TLS
        assert plain[0][0] is None
        no_cert = client_args(replace(cfg, tls_cert=None, tls_key=None), target)  # storescp wants ours
        assert send_files("SPINENODE", target, [str(phantom_files[0])], 10, no_cert)[0][0] is None
    finally:
        dest.terminate()
        dest.wait(10)


def test_tls_config_from_toml_and_its_errors(tmp_path: Path, pki: PKI) -> None:
    f = tmp_path / "n.toml"
    f.write_text(
        f'[node]\ndestinations = ["PACS@10.0.0.5:2762"]\n[tls]\ncert = "{pki.node_cert}"\nkey = "{pki.node_key}"\n'
        f'ca = "{pki.ca}"\nrequire_client_cert = true\ndestinations = ["PACS@10.0.0.5:2762"]\n'
    )
    cfg = load_config(f)
    assert cfg.tls_cert == pki.node_cert and cfg.tls_require_client_cert
    assert cfg.tls_destinations == ("PACS@10.0.0.5:2762",)
    for text, message in (
        (f'[tls]\ncert = "{pki.node_cert}"\n', "both the certificate and the key"),
        (f'[tls]\ncert = "{pki.node_cert}"\nkey = "{pki.node_key}"\nrequire_client_cert = true\n', "needs"),
        ('[tls]\ncert = "/nonexistent.crt"\nkey = "/nonexistent.key"\n', "not found"),
        ("[tls]\nciphers = 1\n", "unknown [tls] keys"),
    ):
        f.write_text(text)
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_config(f)


def test_serve_tls_flags(pki: PKI) -> None:
    from dicom_node.cli import _node_config, build_parser

    args = build_parser().parse_args(
        ["serve", "--tls-cert", str(pki.node_cert), "--tls-key", str(pki.node_key), "--tls-ca", str(pki.ca),
         "--tls-require-client-cert", "--destination", "A@h:1", "--tls-destination", "PACS@pacs:2762"]
    )  # fmt: skip
    cfg = _node_config(args)
    assert cfg.tls_cert == pki.node_cert and cfg.tls_key == pki.node_key and cfg.tls_ca == pki.ca
    assert cfg.tls_require_client_cert is True
    assert [str(d) for d in cfg.destinations] == ["A@h:1", "PACS@pacs:2762"]
    assert cfg.tls_destinations == ("PACS@pacs:2762",)

"""Orthanc (Debian packages ``orthanc`` and ``orthanc-dicomweb``) as a real PACS on loopback, for tests.

:class:`OrthancServer` writes its own JSON configuration into a folder (own storage and index
directories, free HTTP and DICOM ports, the called AE checked, HTTP limited to this host without
authentication, the DICOMweb plugin loaded, optional Lua scripts and declared modalities), runs Orthanc
in the foreground, waits until ``/system`` answers and terminates it cleanly. The REST API is spoken
with ``urllib``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, require_tool

ORTHANC = "Orthanc"
ORTHANC_DEBIAN_PATH = Path("/usr/sbin/Orthanc")  # not on the PATH of non-root users
ORTHANC_AE = "ORTHANC"
DICOMWEB_ROOT = "/dicom-web/"
# Where Debian's orthanc-dicomweb installs the plugin (the first is a link to the versioned library).
DICOMWEB_PLUGIN_CANDIDATES = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    *sorted(Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so*")),
)
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 30.0
POLL_S = 0.2
JOB_FINAL_STATES = frozenset({"Success", "Failure"})


@dataclass(frozen=True)
class Modality:
    """An entry of Orthanc's ``DicomModalities``."""

    ae_title: str
    host: str
    port: int

    def to_json(self) -> dict[str, Any]:
        return {"AET": self.ae_title, "Host": self.host, "Port": self.port}


def orthanc_binary() -> str:
    """The Orthanc executable; skips (fails in CI) when the ``orthanc`` package is not installed."""
    found = shutil.which(ORTHANC)
    if found is None and ORTHANC_DEBIAN_PATH.is_file():
        return str(ORTHANC_DEBIAN_PATH)
    return found or require_tool(ORTHANC)


def dicomweb_plugin() -> Path:
    """The DICOMweb plugin library; skips (fails in CI) when ``orthanc-dicomweb`` is not installed."""
    for candidate in DICOMWEB_PLUGIN_CANDIDATES:
        if candidate.is_file():
            return candidate
    if os.environ.get("CI"):
        pytest.fail("the Orthanc DICOMweb plugin is required in CI (make debian-tools installs orthanc-dicomweb)")
    pytest.skip("orthanc-dicomweb is not installed")


class OrthancServer:
    """One Orthanc process with its own configuration and database in ``folder``."""

    def __init__(
        self,
        folder: Path,
        modalities: dict[str, Modality] | None = None,
        lua_scripts: tuple[Path, ...] = (),
        ae_title: str = ORTHANC_AE,
        dicom_port: int | None = None,
        user: tuple[str, str] | None = None,
        dicomweb_servers: dict[str, Any] | None = None,
    ) -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.dicom_port = dicom_port or free_port()
        self.http_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.http_port}"
        self.log_path = folder / "orthanc.log"
        self.config_path = folder / "orthanc.json"
        self.user = user  # (name, password): HTTP basic authentication required, used by the REST helpers
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "SpineNode test PACS",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": ae_title,
            "DicomCheckCalledAet": True,
            "RemoteAccessAllowed": False,  # HTTP from this host only
            "AuthenticationEnabled": user is not None,
            "RegisteredUsers": dict([user]) if user else {},
            "WebDavEnabled": False,
            "HttpCompressionEnabled": False,
            "DicomAlwaysAllowStore": True,  # the node stores its results from its own AE title
            "DicomScuTimeout": 10,
            "SaveJobs": False,  # a restart must not replay the previous run's jobs
            "DicomModalities": {name: m.to_json() for name, m in (modalities or {}).items()},
            "LuaScripts": [str(p) for p in lua_scripts],
            "Plugins": [str(dicomweb_plugin())],
            "DicomWeb": {"Enable": True, "Root": DICOMWEB_ROOT, "Servers": dicomweb_servers or {}},
        }
        self.config_path.write_text(json.dumps(config, indent=2))
        self.proc: subprocess.Popen[bytes] | None = None

    # --- process ----------------------------------------------------------------------------------
    def start(self) -> OrthancServer:
        with (self.folder / "orthanc.out").open("ab") as out:
            self.proc = subprocess.Popen(
                [orthanc_binary(), f"--logfile={self.log_path}", str(self.config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                env={**os.environ, "TCP_NODELAY": "1"},
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(POLL_S)
        self.stop()
        raise TimeoutError(f"Orthanc did not answer /system in {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def stop(self) -> int | None:
        """SIGTERM and wait for the exit (the SQLite index stays locked until the process is gone).

        Returns the exit status (0 for a clean shutdown), or None when Orthanc was never started.
        """
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        return self.proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # --- REST -------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> Any:
        """Call the REST API; JSON in and out (``raw`` sends bytes, e.g. a DICOM file)."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        self._authorize(req)
        if raw is not None:
            req.add_header("Content-Type", "application/dicom")
        elif body is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as rsp:
            payload = rsp.read()
        return json.loads(payload) if payload else None

    def _authorize(self, req: urllib.request.Request) -> None:
        if self.user is not None:
            token = base64.b64encode(":".join(self.user).encode()).decode()
            req.add_header("Authorization", f"Basic {token}")

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body if body is not None else {})

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body)

    def upload(self, path: Path) -> str:
        """Store a DICOM file through ``POST /instances``; returns Orthanc's instance id."""
        return str(self.request("POST", "/instances", raw=path.read_bytes())["ID"])

    def study_id(self, study_uid: str) -> str | None:
        """Orthanc's id of the study with this StudyInstanceUID, or None."""
        for hit in self._lookup(study_uid):
            if hit["Type"] == "Study":
                return str(hit["ID"])
        return None

    def _lookup(self, uid: str) -> list[dict[str, Any]]:
        """``/tools/lookup`` takes the bare UID as its body (not JSON)."""
        req = urllib.request.Request(self.base_url + "/tools/lookup", data=uid.encode(), method="POST")
        self._authorize(req)
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as rsp:
            return list(json.loads(rsp.read()))

    def wait_for_job(self, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Poll ``/jobs/<id>`` until Success or Failure; returns the job."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job: dict[str, Any] = self.get(f"/jobs/{job_id}")
            if job["State"] in JOB_FINAL_STATES:
                return job
            time.sleep(POLL_S)
        raise TimeoutError(f"Orthanc job {job_id} not finished after {timeout} s")


__all__ = ["DICOMWEB_ROOT", "ORTHANC_AE", "Modality", "OrthancServer", "dicomweb_plugin", "orthanc_binary"]

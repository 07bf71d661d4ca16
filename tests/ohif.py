"""The real OHIF Viewer (the prebuilt ``dist/`` of npm ``@ohif/app``) served next to Orthanc, for tests.

:func:`ohif_dist` fetches the viewer once with ``npm pack`` into a per-user cache outside the checkout
(``~/.cache/spinenode/ohif/``, or ``$SPINENODE_TEST_CACHE/ohif``) and unpacks it there; later runs, and CI
runs on fresh clones of the same machine, reuse the tarball.
:class:`OhifServer` serves that ``dist/`` on loopback with our own ``app-config.js`` (one DICOMweb data
source) and forwards ``/dicom-web/`` to Orthanc, so that the viewer and the archive share one origin, as
behind a reverse proxy in production. The browser's Host header is kept: Orthanc's DICOMweb
plugin builds its BulkDataURIs from it.
"""

from __future__ import annotations

import http.client
import mimetypes
import os
import shutil
import subprocess
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.conftest import free_port, require_tool

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
CACHE = Path(os.environ.get("SPINENODE_TEST_CACHE") or Path.home() / ".cache" / "spinenode") / "ohif"
NPM_PACK_TIMEOUT_S = 300
PROXY_TIMEOUT_S = 60
CHUNK = 1 << 16  # bytes copied at a time from Orthanc to the browser
PROXIED = ("/dicom-web", "/wado")
# Cross-origin isolation, as OHIF's own server sets it (cornerstone3D uses SharedArrayBuffer).
ISOLATION = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"})
APP_CONFIG = """window.config = {
  name: 'spinenode-tests',
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 1,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  defaultDataSourceName: 'orthanc',
  investigationalUseDialog: { option: 'never' },
  showErrorDetails: 'always',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'orthanc',
    configuration: {
      friendlyName: 'Orthanc (SpineNode tests)', name: 'orthanc',
      wadoUriRoot: '/wado', qidoRoot: '/dicom-web', wadoRoot: '/dicom-web',
      qidoSupportsIncludeField: false, supportsReject: false, imageRendering: 'wadors',
      thumbnailRendering: 'wadors', enableStudyLazyLoad: true, supportsFuzzyMatching: false,
      supportsWildcard: true, staticWado: false, singlepart: 'bulkdata,video',
      bulkDataURI: { enabled: true }, omitQuotationForMultipartRequest: true,
    },
  }],
  httpErrorHandler: error => console.error('[ohif http error] ' + (error && error.status) + ' ' +
    String((error && (error.message || error.error)) || error).slice(0, 300)),
};
"""


def ohif_dist() -> Path:
    """The unpacked ``dist/`` of OHIF ``OHIF_VERSION``, fetched into the cache on first use."""
    dist = CACHE / OHIF_VERSION / "package" / "dist"
    if (dist / "index.html").is_file():
        return dist
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / f"ohif-app-{OHIF_VERSION}.tgz"
    if not tarball.is_file():
        proc = subprocess.run(
            [require_tool("npm"), "pack", f"{OHIF_PACKAGE}@{OHIF_VERSION}", "--silent"],
            cwd=CACHE,
            capture_output=True,
            text=True,
            timeout=NPM_PACK_TIMEOUT_S,
        )
        assert proc.returncode == 0 and tarball.is_file(), proc.stdout + proc.stderr
    unpacked = CACHE / f".{OHIF_VERSION}.partial"
    shutil.rmtree(unpacked, ignore_errors=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(unpacked, filter="data")
    unpacked.rename(CACHE / OHIF_VERSION)  # whole or not at all: an interrupted unpack is redone
    return dist


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        return  # no access log on the test output

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.startswith(PROXIED):
            self._proxy()
        elif path == "/app-config.js":
            self._send(APP_CONFIG.encode(), "application/javascript")
        elif path in ("/sw.js", "/init-service-worker.js"):
            self._send(b"// no service worker in a throwaway profile", "application/javascript")
        else:
            self._file(path)

    def _send(self, body: bytes, content_type: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        for name, value in ISOLATION.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _file(self, path: str) -> None:
        root = self.server.dist
        target = (root / path.lstrip("/")).resolve()
        if not target.is_relative_to(root):
            self._send(b"forbidden", "text/plain", 403)
            return
        if not target.is_file():
            if Path(path).suffix:  # a missing asset
                self._send(b"not found", "text/plain", 404)
                return
            target = root / "index.html"  # an app route (/viewer, ...): the single-page app
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        self._send(target.read_bytes(), kind)

    def _proxy(self) -> None:
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.orthanc_port, timeout=PROXY_TIMEOUT_S)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream.request("GET", self.path, headers=headers)
        response = upstream.getresponse()
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        for name, value in ISOLATION.items():
            self.send_header(name, value)
        body = response.read()
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        upstream.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, dist: Path, orthanc_port: int) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.dist = dist.resolve()
        self.orthanc_port = orthanc_port


class OhifServer:
    """OHIF's ``dist`` and Orthanc's DICOMweb on one loopback origin (``url``), in a background thread."""

    def __init__(self, dist: Path, orthanc_http_port: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = _Server(self.port, dist, orthanc_http_port)
        self._thread = threading.Thread(target=self._server.serve_forever, name="ohif-server", daemon=True)

    def __enter__(self) -> OhifServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


__all__ = ["OHIF_VERSION", "OhifServer", "ohif_dist"]

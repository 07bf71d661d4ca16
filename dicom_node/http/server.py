"""uvicorn in a thread of ``spinenode serve``: the web page and REST API next to the DICOM listener.

Beyond loopback the server needs credentials in the configuration (``dicom_node.http.auth``):
:class:`InsecureServer` otherwise. With ``[http] cert`` and ``key`` it speaks HTTPS only.

``bind`` opens the socket first (an address in use is an error before the node starts), ``start``
serves on it after the node has started, ``stop`` closes it (open requests get a few seconds) before the
node stops. uvicorn installs no signal handlers outside the main thread: the CLI's handlers stop both.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import TYPE_CHECKING

import uvicorn

from dicom_node.config.web import is_loopback
from dicom_node.http.app import build_app
from dicom_node.http.uploads import MAX_UPLOAD_BYTES

if TYPE_CHECKING:
    from dicom_node.roles.node import Node

log = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0
GRACEFUL_SHUTDOWN_S = 5  # open requests get this long when the node stops
KEEP_ALIVE_S = 5
MAX_CONNECTIONS = 64  # beyond this uvicorn answers 503


class InsecureServer(ValueError):
    """The server would listen beyond loopback without any credential configured."""


class HttpServer:
    def __init__(self, node: Node, host: str, port: int, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> None:
        config = node.config
        if not is_loopback(host) and not (config.http_users or config.http_tokens):
            raise InsecureServer(
                f"refusing to serve HTTP on {host} without authentication: configure [[http.users]] or "
                "[[http.tokens]], or listen on 127.0.0.1"
            )
        self.host = host
        self.port = port
        self.tls = (config.http_tls_cert, config.http_tls_key) if config.http_tls_cert else None
        self.app = build_app(node, max_upload_bytes, host=host, https=self.tls is not None)
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/"

    def bind(self) -> int:
        """Open and bind the listening socket; returns the port (raises OSError)."""
        family, kind, proto, _, address = socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self.port = int(sock.getsockname()[1])
        return self.port

    def start(self) -> None:
        if self._socket is None:
            self.bind()
        config = uvicorn.Config(
            self.app,
            log_config=None,  # the CLI configures logging
            access_log=False,
            lifespan="off",
            ws="none",
            server_header=False,
            timeout_keep_alive=KEEP_ALIVE_S,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            limit_concurrency=MAX_CONNECTIONS,
            ssl_certfile=str(self.tls[0]) if self.tls else None,
            ssl_keyfile=str(self.tls[1]) if self.tls else None,
        )
        self._server = uvicorn.Server(config)
        sockets = [self._socket]
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": sockets}, name="http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start on {self.url}")
            time.sleep(0.02)
        log.info("web page and REST API at %s", self.url)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(GRACEFUL_SHUTDOWN_S + 5)
        if self._socket is not None:
            self._socket.close()
            self._socket = None

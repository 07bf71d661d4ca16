"""DICOM over TLS (PS3.15 Annex B): the SCP's server context and the sender's client context.

With a certificate and key configured the SCP accepts only TLS connections; with ``require_client_cert``
a peer must present a certificate signed by the configured CA (mutual TLS). Destinations listed in
``[tls] destinations`` are reached over TLS: their certificate is verified against the CA (and their
host name or address), and our certificate, when configured, is presented as the client certificate.
"""

from __future__ import annotations

import ssl
from typing import Any

from dicom_node.config import Destination, NodeConfig


class _HandshakeInAssociationThread(ssl.SSLContext):
    """pynetdicom wraps accepted sockets in its accept loop; a blocking handshake there would let one
    silent client stall every new connection. The handshake is left to the first read instead, in the
    association's own thread (OpenSSL completes it implicitly)."""

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


def server_context(config: NodeConfig) -> ssl.SSLContext | None:
    """The SCP's TLS context, or None when no certificate is configured (plain TCP)."""
    if config.tls_cert is None:
        return None
    ctx = _HandshakeInAssociationThread(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.tls_ca is not None:
        ctx.load_verify_locations(cafile=str(config.tls_ca))
    ctx.load_cert_chain(str(config.tls_cert), str(config.tls_key) if config.tls_key else None)
    if config.tls_require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif config.tls_ca is not None:
        ctx.verify_mode = ssl.CERT_OPTIONAL  # a presented certificate must still verify
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_context(config: NodeConfig) -> ssl.SSLContext:
    """The sender's TLS context: verify the destination against the CA (system CAs when none is set)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(config.tls_ca) if config.tls_ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.tls_cert is not None:
        ctx.load_cert_chain(str(config.tls_cert), str(config.tls_key) if config.tls_key else None)
    return ctx


def client_args(config: NodeConfig, dest: Destination) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``tls_args`` for an association with ``dest``: None unless it is a TLS destination."""
    if str(dest) not in config.tls_destinations:
        return None
    return client_context(config), dest.host

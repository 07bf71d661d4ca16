"""The STOW-RS client: the sender's transport for ``stow+https://...`` destinations.

One ``httpx.Client`` per destination keeps its connection open between passes. A pass's files for one
destination go out as one ``multipart/related`` request (split at ``STOW_BATCH_BYTES``); the JSON answer
says which instance was stored and which was refused with which reason. Each file gets an
:class:`Outcome`: delivered (status 0 or the server's warning reason), a failure to retry (network, 5xx,
408, 429, out of resources), or a permanent failure - a 4xx that the same request will meet again (bad
credentials, wrong URL, refused data set): the sender marks those failed at once with the reason, and
``spinenode retry --failed`` sends them again once the cause is fixed.

Credentials go only in the Authorization header (basic or bearer), never in logs or the audit; redirects
are not followed (they could carry the credentials elsewhere); TLS certificates are verified against the
configured CA or the system's.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import httpx
from pydicom.filereader import read_file_meta_info

from dicom_node.config.web import StowDestination, StowSettings
from dicom_node.dicomweb.message import (
    DICOM_MEDIA_TYPE,
    RESPONSE_MEDIA_TYPE,
    InstanceResult,
    multipart_body,
    new_boundary,
    parse_response,
    request_content_type,
)
from dicom_node.dimse.status import PROCESSING_FAILURE

log = logging.getLogger(__name__)

STOW_BATCH_BYTES = 64 * 2**20  # instances per request up to this many bytes (one SC may be tens of MB)
ERROR_BODY_CHARS = 200  # of a server's error body, kept in the attempt log
RETRYABLE_4XX = frozenset({HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.TOO_MANY_REQUESTS})
# per-instance failure reasons worth another try: out of resources (0xA7xx), processing failure (0x0110)
RETRYABLE_REASON_MASK, OUT_OF_RESOURCES_PREFIX = 0xFF00, 0xA700
HINTS = {
    HTTPStatus.UNAUTHORIZED: "check the credentials in [[dicomweb.destinations]]",
    HTTPStatus.FORBIDDEN: "the credentials may not store here",
    HTTPStatus.NOT_FOUND: "check the URL (the DICOMweb root, without /studies)",
    HTTPStatus.METHOD_NOT_ALLOWED: "check the URL (the DICOMweb root, without /studies)",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "the server's upload limit is smaller than the instance",
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE: "the server does not take application/dicom",
}


@dataclass(frozen=True)
class Outcome:
    """What became of one file: ``status`` 0 or a warning when delivered, the failure reason, or None."""

    status: int | None
    error: str | None = None
    permanent: bool = False  # the same request will fail again: no retry


@dataclass(frozen=True)
class _File:
    path: str
    sop_instance: str
    data: bytes


def _retryable_reason(reason: int) -> bool:
    return reason & RETRYABLE_REASON_MASK == OUT_OF_RESOURCES_PREFIX or reason == PROCESSING_FAILURE


def _instance_outcome(result: InstanceResult) -> Outcome:
    if result.failure is None:
        return Outcome(int(result.warning or 0))
    comment = f": {result.comment}" if result.comment else ""
    error = f"STOW-RS failure reason 0x{result.failure:04X}{comment}"
    return Outcome(result.failure, error, permanent=not _retryable_reason(result.failure))


def _http_error(rsp: httpx.Response, dest: StowDestination) -> Outcome:
    code = rsp.status_code
    text = rsp.text[:ERROR_BODY_CHARS].strip() if rsp.content else ""
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = ""
    if 300 <= code < 400:
        where = rsp.headers.get("location", "")[:ERROR_BODY_CHARS]
        return Outcome(None, f"HTTP {code} {phrase}: redirected to {where}; configure that URL", permanent=True)
    if 400 <= code < 500 and code not in RETRYABLE_4XX:
        hint = HINTS.get(HTTPStatus(code), "the request was refused") if phrase else "the request was refused"
        error = f"HTTP {code} {phrase} from {dest}: {hint}; will not succeed on retry"
        return Outcome(None, f"{error} ({text})" if text else error, permanent=True)
    return Outcome(None, f"HTTP {code} {phrase}" + (f": {text}" if text else ""))


class StowClient:
    """Sends files to STOW-RS destinations; thread-safe (the sender thread uses it)."""

    def __init__(self) -> None:
        self._clients: dict[StowSettings, httpx.Client] = {}  # one per destination and its settings
        self._lock = threading.Lock()

    def _client(self, settings: StowSettings) -> httpx.Client:
        client = self._clients.get(settings)
        if client is None:
            verify: ssl.SSLContext | bool = False
            if settings.verify_tls:
                verify = ssl.create_default_context(cafile=str(settings.ca) if settings.ca else None)
            headers = {"Accept": RESPONSE_MEDIA_TYPE, "User-Agent": "SpineNode"}
            auth: httpx.Auth | None = None
            if settings.auth == "basic":
                auth = httpx.BasicAuth(settings.username, settings.password)
            elif settings.auth == "bearer":
                headers["Authorization"] = f"Bearer {settings.token}"
            client = httpx.Client(
                verify=verify, auth=auth, headers=headers, timeout=settings.timeout_s, follow_redirects=False
            )
            self._clients[settings] = client
        return client

    def send(self, settings: StowSettings, paths: list[str]) -> list[Outcome]:
        """STOW ``paths`` to the destination; one :class:`Outcome` per path, in order."""
        with self._lock:
            outcomes: dict[int, Outcome] = {}
            batch: list[tuple[int, _File]] = []
            size = 0
            for index, path in enumerate(paths):
                try:
                    f = _read(path)
                except Exception as exc:  # noqa: BLE001 - an unreadable output file: that file fails, the others go
                    outcomes[index] = Outcome(None, f"{type(exc).__name__}: {exc}")
                    continue
                if batch and size + len(f.data) > STOW_BATCH_BYTES:
                    outcomes |= self._post(settings, batch)
                    batch, size = [], 0
                batch.append((index, f))
                size += len(f.data)
            if batch:
                outcomes |= self._post(settings, batch)
            return [outcomes[i] for i in range(len(paths))]

    def _post(self, settings: StowSettings, batch: list[tuple[int, _File]]) -> dict[int, Outcome]:
        dest = settings.destination
        boundary = new_boundary()
        body = multipart_body((f.data for _, f in batch), boundary)
        try:
            rsp = self._client(settings).post(
                dest.studies_url, content=body, headers={"Content-Type": request_content_type(boundary)}
            )
        except httpx.HTTPError as exc:  # connection refused, TLS verification, timeouts
            error = f"{type(exc).__name__}: {exc}"
            log.info("STOW-RS to %s: %s", dest, error)
            self._drop(settings)
            return {i: Outcome(None, error) for i, _ in batch}
        if rsp.status_code not in (HTTPStatus.OK, HTTPStatus.ACCEPTED, HTTPStatus.CONFLICT):
            outcome = _http_error(rsp, dest)
            return {i: outcome for i, _ in batch}
        try:
            named = parse_response(rsp.content)
        except ValueError as exc:
            error = f"HTTP {rsp.status_code}: unreadable STOW-RS response ({exc})"
            return {i: Outcome(None, error) for i, _ in batch}
        out: dict[int, Outcome] = {}
        for i, f in batch:
            result = named.get(f.sop_instance)
            if result is not None:
                out[i] = _instance_outcome(result)
            elif rsp.status_code == HTTPStatus.OK:  # everything stored; the server listed nothing
                out[i] = Outcome(0)
            else:
                out[i] = Outcome(None, f"HTTP {rsp.status_code}: the response does not name the instance")
        return out

    def _drop(self, settings: StowSettings) -> None:
        client = self._clients.pop(settings, None)
        if client is not None:
            client.close()

    def close(self) -> None:
        with self._lock:
            for settings in list(self._clients):
                self._drop(settings)


def _read(path: str) -> _File:
    meta = read_file_meta_info(path)
    uid = str(meta.get("MediaStorageSOPInstanceUID", ""))
    return _File(path, uid, Path(path).read_bytes())


__all__ = ["DICOM_MEDIA_TYPE", "Outcome", "StowClient"]

"""``POST /dicom-web/studies[/{study}]``: STOW-RS into the node, through the C-STORE receiver's own path.

The body is ``multipart/related; type="application/dicom"``, one Part 10 file per part, parsed as it
streams in (one part in memory at a time). Each instance goes through ``Receiver.receive`` - the same
capacity checks, validation, durable write (fsync) and audit commit as a C-STORE, with the SOP class of
the file meta standing for the presentation context - so an instance is reported stored only once it is
on disk and its job is committed. SOP classes and transfer syntaxes that C-STORE negotiation would refuse
are refused here per instance (0x0122, 0xC122), as is a part over the size limit (0xA700).

Answer (PS3.18 10.5.3): 200 when every instance was stored, 202 when some were refused, 409 when none
was stored; a Failure Reason and its Error Comment (in words) for every refused instance. Every request
is recorded as an incoming association (calling AE: the user or token name, peer address) and every
refusal as a ``refused`` event, as for DIMSE.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from io import BytesIO
from typing import TYPE_CHECKING

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from dicom_node.audit.records import AssociationRecord, utcnow
from dicom_node.dicomweb.message import (
    DICOM_MEDIA_TYPE,
    MULTIPART_RELATED,
    RESPONSE_MEDIA_TYPE,
    SOP_CLASS_NOT_SUPPORTED,
    TRANSFER_SYNTAX_NOT_SUPPORTED,
    InstanceResult,
    parse_content_type,
    response_json,
)
from dicom_node.dimse.scp import ACCEPTED_SOP_CLASSES, ACCEPTED_TRANSFER_SYNTAXES, Refusal, _is_decode_error
from dicom_node.dimse.status import StoreStatus
from dicom_node.reference import intake

if TYPE_CHECKING:
    from dicom_node.roles.node import Node

log = logging.getLogger(__name__)

STOW_CALLING_AE_CHARS = 16  # the association record's calling AE column
STOW_MARK = "STOW-RS"  # the association record's reason: an HTTP request, not a DIMSE association


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    too_large: bool = False


class _Parts:
    """Callbacks of python-multipart's streaming parser: completed parts wait in ``ready``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.ready: list[_Part] = []
        self._part = _Part()
        self._field = b""
        self._value = b""

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: self._add("_field", d[s:e]),
            "on_header_value": lambda d, s, e: self._add("_value", d[s:e]),
            "on_header_end": self._header_end,
            "on_part_data": self._data,
            "on_part_end": lambda: self.ready.append(self._part),
        }

    def _begin(self) -> None:
        self._part = _Part()

    def _add(self, name: str, data: bytes) -> None:
        setattr(self, name, getattr(self, name) + data)

    def _header_end(self) -> None:
        self._part.headers[self._field.decode("latin-1").strip().lower()] = self._value.decode("latin-1").strip()
        self._field = self._value = b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        part.size += end - start
        if part.size > self.limit:
            part.too_large, part.chunks = True, []
        elif not part.too_large:
            part.chunks.append(data[start:end])


def add_stow_routes(app: FastAPI, node: Node, max_instance_bytes: int) -> None:
    receiver = node.receiver

    def open_record(request: Request) -> int:
        principal = request.state.principal
        with node.db.session() as s:
            rec = AssociationRecord(
                calling_ae=(principal.name if principal else "")[:STOW_CALLING_AE_CHARS],
                called_ae=node.config.ae_title,
                peer_address=request.client.host if request.client else "",
                peer_port=request.client.port if request.client else 0,
                accepted=True,
                reason=STOW_MARK,
            )
            s.add(rec)
            s.flush()
            return rec.id

    def close_record(assoc_id: int) -> None:
        with node.db.session() as s:
            rec = s.get(AssociationRecord, assoc_id)
            if rec is not None:
                rec.ended_at = utcnow()

    def refuse(sop_class: str, sop_uid: str, status: int, detail: str, assoc_id: int) -> InstanceResult:
        log.warning("STOW-RS refused %s: %s", sop_uid or "an instance", detail)
        try:
            node.db.record_event(
                "refused", detail, status=status, sop_instance_uid=sop_uid or None, association_id=assoc_id
            )
        except Exception:  # the database itself may be the problem; the answer still goes out
            log.exception("could not record refusal of %s", sop_uid)
        return InstanceResult(sop_class, sop_uid, failure=status, comment=detail)

    def receive(part: _Part, study_uid: str | None, calling: str, assoc_id: int) -> InstanceResult:
        """One part through the receiver; never raises."""
        media = part.headers.get("content-type", DICOM_MEDIA_TYPE).split(";", 1)[0].strip().lower()
        if media != DICOM_MEDIA_TYPE:
            return refuse("", "", StoreStatus.CANNOT_UNDERSTAND, f"part of type {media[:40]}, not DICOM", assoc_id)
        if part.too_large:
            limit = f"{max_instance_bytes // 2**20} MiB"
            return refuse("", "", StoreStatus.OUT_OF_RESOURCES, f"instance larger than {limit}", assoc_id)
        data = b"".join(part.chunks)
        try:
            ds = dcmread(BytesIO(data))
        except (InvalidDicomError, *_DECODE_ERRORS) as exc:
            return refuse("", "", StoreStatus.CANNOT_UNDERSTAND, f"not a DICOM Part 10 file: {exc}"[:200], assoc_id)
        meta = ds.file_meta
        sop_class = str(meta.get("MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
        sop_uid = str(ds.get("SOPInstanceUID", "") or "")
        segmentation = sop_class in intake.REFERENCE_SOP_CLASSES
        if sop_class not in ACCEPTED_SOP_CLASSES and not segmentation:
            return refuse(sop_class, sop_uid, SOP_CLASS_NOT_SUPPORTED, f"SOP class {sop_class} not accepted", assoc_id)
        syntaxes = intake.REFERENCE_TRANSFER_SYNTAXES if segmentation else ACCEPTED_TRANSFER_SYNTAXES
        syntax = str(meta.get("TransferSyntaxUID", ""))
        if syntax not in syntaxes:
            detail = f"transfer syntax {syntax or '(none)'} not accepted"
            return refuse(sop_class, sop_uid, TRANSFER_SYNTAX_NOT_SUPPORTED, detail, assoc_id)
        if study_uid is not None and str(ds.get("StudyInstanceUID", "")) != study_uid:
            detail = "StudyInstanceUID is not the study of the request URL"
            return refuse(sop_class, sop_uid, StoreStatus.CANNOT_UNDERSTAND, detail, assoc_id)
        try:
            receiver.receive(ds, data, sop_class, node.config.ae_title, calling, assoc_id)
        except Refusal as exc:
            return refuse(sop_class, sop_uid, exc.status, exc.detail, assoc_id)
        except Exception as exc:  # a malformed data set, or a bug: report it, like the C-STORE handler
            status = StoreStatus.CANNOT_UNDERSTAND if _is_decode_error(exc) else StoreStatus.UNEXPECTED_ERROR
            log.exception("STOW-RS of %s failed", sop_uid)
            return refuse(sop_class, sop_uid, status, f"{type(exc).__name__}: {exc}"[:200], assoc_id)
        return InstanceResult(sop_class, sop_uid)

    async def stow(request: Request, study_uid: str | None) -> JSONResponse:
        media, kind, boundary = parse_content_type(request.headers.get("content-type", ""))
        if media != MULTIPART_RELATED or (kind is not None and kind != DICOM_MEDIA_TYPE):
            raise HTTPException(415, f'send {MULTIPART_RELATED}; type="{DICOM_MEDIA_TYPE}" (Part 10 files)')
        if not boundary:
            raise HTTPException(400, "the multipart/related Content-Type has no boundary")
        principal = request.state.principal
        calling = principal.name if principal else ""
        assoc_id = await run_in_threadpool(open_record, request)
        parts = _Parts(max_instance_bytes)
        parser = MultipartParser(boundary, parts.callbacks())  # type: ignore[arg-type]
        results: list[InstanceResult] = []
        try:
            async for chunk in request.stream():
                parser.write(chunk)
                while parts.ready:
                    results.append(await run_in_threadpool(receive, parts.ready.pop(0), study_uid, calling, assoc_id))
            parser.finalize()
        except MultipartParseError as exc:
            if not results:
                raise HTTPException(400, f"unreadable multipart/related body: {exc}") from None
            log.warning("STOW-RS body broken after %d instance(s): %s", len(results), exc)
        except ClientDisconnect:
            log.warning("STOW-RS client went away after %d instance(s)", len(results))
        finally:
            await run_in_threadpool(close_record, assoc_id)
        if not results:
            raise HTTPException(400, "no instance in the request")
        failed = sum(r.failure is not None for r in results)
        status = 200 if not failed else (409 if failed == len(results) else 202)
        return JSONResponse(response_json(results), status_code=status, media_type=RESPONSE_MEDIA_TYPE)

    @app.post("/dicom-web/studies")
    async def stow_any(request: Request) -> JSONResponse:
        return await stow(request, None)

    @app.post("/dicom-web/studies/{study_uid}")
    async def stow_study(request: Request, study_uid: str) -> JSONResponse:
        return await stow(request, study_uid)


_DECODE_ERRORS = (ValueError, KeyError, EOFError, TypeError, NotImplementedError, OverflowError, OSError)

__all__ = ["add_stow_routes"]

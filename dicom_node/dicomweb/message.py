"""STOW-RS messages: the ``multipart/related; type="application/dicom"`` request and the JSON response.

The response (PS3.18 10.5.3, DICOM JSON model) lists stored instances in Referenced SOP Sequence
(0008,1199), with a Warning Reason (0008,1196) where the server coerced something, and refused ones in
Failed SOP Sequence (0008,1198) with a Failure Reason (0008,1197). The node adds the reason in words as
Error Comment (0000,0902) in each failed item.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dicom_node.dimse.status import PROCESSING_FAILURE

DICOM_MEDIA_TYPE = "application/dicom"
RESPONSE_MEDIA_TYPE = "application/dicom+json"
MULTIPART_RELATED = "multipart/related"
TAG_RETRIEVE_URL = "00081190"
TAG_FAILED_SOP_SEQUENCE = "00081198"
TAG_REFERENCED_SOP_SEQUENCE = "00081199"
TAG_SOP_CLASS = "00081150"
TAG_SOP_INSTANCE = "00081155"
TAG_WARNING_REASON = "00081196"
TAG_FAILURE_REASON = "00081197"
TAG_ERROR_COMMENT = "00000902"
ERROR_COMMENT_CHARS = 64  # LO
# STOW-RS failure reasons beyond the C-STORE statuses (PS3.18 Table 10.5.3-2, PS3.7 Annex C)
SOP_CLASS_NOT_SUPPORTED = 0x0122
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_TYPE = re.compile(r'type="?([^";]+)"?', re.IGNORECASE)


@dataclass(frozen=True)
class InstanceResult:
    """One instance of a STOW-RS request: stored (``failure`` None) or refused with a reason."""

    sop_class: str
    sop_instance: str
    failure: int | None = None  # Failure Reason
    warning: int | None = None  # Warning Reason of a stored instance
    comment: str | None = None  # the reason in words


def new_boundary() -> str:
    return f"spinenode-{secrets.token_hex(16)}"


def request_content_type(boundary: str) -> str:
    return f'{MULTIPART_RELATED}; type="{DICOM_MEDIA_TYPE}"; boundary={boundary}'


def multipart_body(files: Iterable[bytes], boundary: str) -> bytes:
    chunks: list[bytes] = []
    for data in files:
        chunks += [f"--{boundary}\r\nContent-Type: {DICOM_MEDIA_TYPE}\r\n\r\n".encode(), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks)


def parse_content_type(value: str) -> tuple[str, str | None, str | None]:
    """(media type, ``type`` parameter, boundary) of a Content-Type header."""
    media = value.split(";", 1)[0].strip().lower()
    kind = _TYPE.search(value)
    boundary = _BOUNDARY.search(value)
    return media, kind.group(1).strip().lower() if kind else None, boundary.group(1) if boundary else None


def _uid(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]}


def response_json(results: list[InstanceResult]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    stored, failed = [], []
    for r in results:
        item: dict[str, Any] = {}
        if r.sop_class:
            item[TAG_SOP_CLASS] = _uid(r.sop_class)
        if r.sop_instance:
            item[TAG_SOP_INSTANCE] = _uid(r.sop_instance)
        if r.failure is None:
            if r.warning is not None:
                item[TAG_WARNING_REASON] = {"vr": "US", "Value": [r.warning]}
            stored.append(item)
        else:
            item[TAG_FAILURE_REASON] = {"vr": "US", "Value": [r.failure]}
            if r.comment:
                item[TAG_ERROR_COMMENT] = {"vr": "LO", "Value": [r.comment[:ERROR_COMMENT_CHARS]]}
            failed.append(item)
    if failed:
        body[TAG_FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": failed}
    if stored:
        body[TAG_REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": stored}
    return body


def _value(item: dict[str, Any], tag: str) -> Any:
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else None


def parse_response(payload: bytes) -> dict[str, InstanceResult]:
    """The instances a STOW-RS response names, by SOP Instance UID (empty when it names none).

    Raises ValueError for a body that is not the DICOM JSON model."""
    if not payload.strip():
        return {}
    body = json.loads(payload)
    if isinstance(body, list):  # some servers wrap the data set in an array
        body = body[0] if body else {}
    if not isinstance(body, dict):
        raise ValueError("the STOW-RS response is not a JSON object")
    out: dict[str, InstanceResult] = {}
    for tag, failed in ((TAG_REFERENCED_SOP_SEQUENCE, False), (TAG_FAILED_SOP_SEQUENCE, True)):
        for item in (body.get(tag) or {}).get("Value") or []:
            uid = _value(item, TAG_SOP_INSTANCE)
            if not isinstance(uid, str):
                continue
            reason = _value(item, TAG_FAILURE_REASON) if failed else None
            out[uid] = InstanceResult(
                str(_value(item, TAG_SOP_CLASS) or ""),
                uid,
                failure=int(reason) if failed and reason is not None else (PROCESSING_FAILURE if failed else None),
                warning=None if failed else _value(item, TAG_WARNING_REASON),
                comment=_value(item, TAG_ERROR_COMMENT),
            )
    return out

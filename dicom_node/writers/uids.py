"""Deterministic UIDs for the objects SpineNode writes.

Every output UID is a ``2.25.`` UID (PS3.5 B.2: the decimal form of a 128-bit UUID) whose bits come from
the SHA-256 of what identifies the output: the source image, the model, its weights and the kind of
object (for an evaluation, also the reference SEG). Running the same model on the same image again
therefore gives the same study-level UIDs, so a resend replaces instead of duplicating, while new
weights give new UIDs.
"""

from __future__ import annotations

import hashlib
import json

UID_ROOT = "2.25."
MAX_UID_LENGTH = 64
UUID_BITS = 128
# RFC 9562: version 8 ("custom") UUID with the RFC variant, so the integer is a valid UUID.
_VERSION_SHIFT = 76
_VARIANT_SHIFT = 62
_VERSION_MASK = 0xF << _VERSION_SHIFT
_VARIANT_MASK = 0x3 << _VARIANT_SHIFT
_UUID_VERSION = 8
_UUID_VARIANT = 0b10

# Kinds of output UID.
SEG_SERIES = "seg-series"
SEG = "seg"
SR_SERIES = "sr-series"
SR = "sr"
SC_SERIES = "sc-series"
SC = "sc"
EVAL_SR_SERIES = "eval-sr-series"
EVAL_SR = "eval-sr"
DEVICE = "device"


def _uid_from_parts(parts: list[str]) -> str:
    digest = hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).digest()
    value = int.from_bytes(digest[: UUID_BITS // 8], "big")
    value = (value & ~_VERSION_MASK) | (_UUID_VERSION << _VERSION_SHIFT)
    value = (value & ~_VARIANT_MASK) | (_UUID_VARIANT << _VARIANT_SHIFT)
    uid = f"{UID_ROOT}{value}"
    assert len(uid) <= MAX_UID_LENGTH
    return uid


def output_uid(source_sop_uid: str, model_name: str, weights_sha256: str, kind: str) -> str:
    """The UID of output ``kind`` (e.g. ``"seg-series"``, ``"sr"``) for one source image and model."""
    return _uid_from_parts(["spinenode-output", str(source_sop_uid), model_name, weights_sha256, kind])


def tracking_uid(source_sop_uid: str, model_name: str, weights_sha256: str, segment: str) -> str:
    """The Tracking Unique Identifier of one segment's findings (SEG segment and SR measurement group)."""
    return output_uid(source_sop_uid, model_name, weights_sha256, f"tracking-{segment}")


def evaluation_uid(source_sop_uid: str, model_name: str, weights_sha256: str, reference_sop_uid: str, kind: str) -> str:
    """The UID of an evaluation output (``"eval-sr"``, ``"eval-sr-series"``) against one reference SEG.

    Each reference (e.g. a second reader's SEG of the same image) gets its own series and instance.
    """
    return output_uid(source_sop_uid, model_name, weights_sha256, f"{kind}:{reference_sop_uid}")


def device_uid(model_name: str, weights_sha256: str) -> str:
    """The Device Observer UID of a model (the same for every image it reads)."""
    return _uid_from_parts(["spinenode-device", model_name, weights_sha256, DEVICE])


__all__ = [
    "EVAL_SR",
    "EVAL_SR_SERIES",
    "SC",
    "SC_SERIES",
    "SEG",
    "SEG_SERIES",
    "SR",
    "SR_SERIES",
    "device_uid",
    "evaluation_uid",
    "output_uid",
    "tracking_uid",
]

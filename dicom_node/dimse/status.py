"""Named DIMSE status values used by the node (PS3.4 Annex B.2 and PS3.7 Annex C).

Which statuses mean "stored" comes from pynetdicom's storage status table, not a list of ours.
"""

from __future__ import annotations

from enum import IntEnum

from pynetdicom.status import STATUS_WARNING, STORAGE_SERVICE_CLASS_STATUS


class StoreStatus(IntEnum):
    """C-STORE response statuses the SCP returns."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700  # refused: cannot persist (disk, database) or backlog is full
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000  # refused: undecodable or unusable data set
    # An unexpected exception in the node's own handler (a bug, logged with its traceback): pynetdicom's
    # convention for handler failures, in the storage service's "Cannot understand" range (0xCxxx, PS3.4
    # B.2.3). Not the standard's "Processing failure" (0x0110, PROCESSING_FAILURE below).
    UNEXPECTED_ERROR = 0xC211


class EchoStatus(IntEnum):
    SUCCESS = 0x0000


PROCESSING_FAILURE = 0x0110  # the standard's general "Processing failure" (PS3.7 C.4.3), as DICOMweb reports it

SUCCESS_STATUSES = frozenset({StoreStatus.SUCCESS})
# The storage service's warnings (0xB000, 0xB006, 0xB007: stored with coercion or elements discarded), and
# the general warnings pynetdicom lists for it (0x0107, 0x0116): the peer stored the object.
WARNING_STATUSES = frozenset(
    code for code, (category, _) in STORAGE_SERVICE_CLASS_STATUS.items() if category == STATUS_WARNING
)


DELIVERED_STATUSES = SUCCESS_STATUSES | WARNING_STATUSES  # the peer has the object


def is_delivered(status: int) -> bool:
    """True when a peer's C-STORE status means it accepted the object (success or warning)."""
    return status in DELIVERED_STATUSES

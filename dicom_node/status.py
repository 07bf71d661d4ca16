"""Named DIMSE status values used by the node (PS3.4 Annex B.2 and PS3.7 Annex C)."""

from __future__ import annotations

from enum import IntEnum


class StoreStatus(IntEnum):
    """C-STORE response statuses the SCP returns."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700  # refused: cannot persist (disk, database) or backlog is full
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000  # refused: undecodable or unusable data set
    PROCESSING_FAILURE = 0xC211  # an unexpected exception escaped (pynetdicom's convention)


class EchoStatus(IntEnum):
    SUCCESS = 0x0000


SUCCESS_STATUSES = frozenset({StoreStatus.SUCCESS})
# Warning statuses (0xB000, 0xB007, 0xB006) mean the peer stored the object with coercion.
WARNING_STATUSES = frozenset({0xB000, 0xB006, 0xB007})


def is_delivered(status: int) -> bool:
    """True when a peer's C-STORE status means it accepted the object (success or warning)."""
    return status in SUCCESS_STATUSES or status in WARNING_STATUSES

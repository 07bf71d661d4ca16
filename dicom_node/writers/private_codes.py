"""SpineNode's private coding scheme, for concepts no standard terminology has (declared in every SR)."""

from __future__ import annotations

PRIVATE_SCHEME = "99SPINESEG"  # a private scheme designator begins with 99 (PS3.3 8.2)
PRIVATE_SCHEME_NAME = "SpineNode segmentation measures"
PRIVATE_SCHEME_ORGANIZATION = "SpineNode"

__all__ = ["PRIVATE_SCHEME", "PRIVATE_SCHEME_NAME", "PRIVATE_SCHEME_ORGANIZATION"]

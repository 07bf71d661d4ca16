"""The image region of one segment on the source image, as a TID 1410 SCOORD can carry it.

A TID 1410 measurement group names its region of interest with one closed 2D SCOORD on the source
image (PS3.16 TID 1410 "Image Region"; a closed POLYLINE repeats its first point last, PS3.3
C.18.6.1.2). A segment of one connected piece gets its outline (CID 219 "Outline"); a segment in several
pieces (a model's specks) cannot be drawn by one polyline, so it gets the convex hull of all its pixels
and says so (CID 219 "Bounded by"). The measurements of the group stay those of the segment itself:
the SR's groups share their Tracking UID with the SEG's segments.

Coordinates are DICOM image coordinates (column, row), with (0, 0) the top left corner of the top left
pixel, so a pixel's centre is at +0.5 (PS3.3 C.18.6.1.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

OUTLINE = codes.cid219.Outline
BOUNDED_BY = codes.cid219.BoundedBy
PIXEL_CENTRE = 0.5  # offset from a pixel's index to its centre in image coordinates
# Largest distance (pixels) between an outline and its simplified polyline: keeps the SR small (a
# 2500-row column has thousands of contour vertices) without moving the line visibly.
SIMPLIFY_TOLERANCE_PX = 1.0
MIN_POLYGON_VERTICES = 3  # fewer distinct points enclose no area


@dataclass(frozen=True)
class SegmentRegion:
    """A closed polyline (``(n, 2)`` float, first point repeated last) and what it depicts."""

    points: np.ndarray
    purpose: Code


def _closed(points: np.ndarray) -> np.ndarray:
    return np.vstack([points, points[:1]]).astype(np.float64)


def _box(mask: np.ndarray) -> np.ndarray:
    """The pixel edges around ``mask``'s pixels, as a rectangle (for segments too small to outline)."""
    rows, cols = np.nonzero(mask)
    x0, x1, y0, y1 = float(cols.min()), float(cols.max() + 1), float(rows.min()), float(rows.max() + 1)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])


def segment_region(mask: np.ndarray) -> SegmentRegion | None:
    """The region of a segment's ``mask`` (rows, columns); ``None`` when the segment has no pixel."""
    pixels = np.ascontiguousarray(mask, dtype=np.uint8)
    contours, _ = cv2.findContours(pixels, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    if len(contours) == 1:
        shape, purpose = contours[0], OUTLINE
    else:
        shape, purpose = cv2.convexHull(np.vstack(contours)), BOUNDED_BY
    simplified = cv2.approxPolyDP(shape, SIMPLIFY_TOLERANCE_PX, True).reshape(-1, 2)
    if len(np.unique(simplified, axis=0)) < MIN_POLYGON_VERTICES:
        return SegmentRegion(_closed(_box(mask > 0)), BOUNDED_BY)
    return SegmentRegion(_closed(simplified + PIXEL_CENTRE), purpose)


def image_region(points: np.ndarray, source: Dataset) -> hd.sr.ImageRegion:
    """A TID 1410 Image Region: the closed POLYLINE ``points`` (image coordinates) on ``source``."""
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=points,
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=source.SOPClassUID, referenced_sop_instance_uid=source.SOPInstanceUID
        ),
    )


__all__ = ["BOUNDED_BY", "OUTLINE", "SegmentRegion", "image_region", "segment_region"]

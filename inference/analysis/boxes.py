"""Bounding boxes of masks: the part of a radiograph where the column is, so that per-pixel work stays there."""

from __future__ import annotations

import numpy as np


def bounding_box(mask: np.ndarray) -> tuple[slice, slice] | None:
    """The rows and columns of a 2-D mask's true pixels (one pass of row and column projections), or None
    when it has none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)

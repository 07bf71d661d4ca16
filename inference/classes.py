"""The segmentation classes, in the seed app's order (F=0, V=1, T1=2)."""

from __future__ import annotations

from enum import IntEnum


class SpineClass(IntEnum):
    """Label values of a SpineNode mask."""

    F = 0  # background
    V = 1  # vertebral column (every vertebra except T1)
    T1 = 2  # the first thoracic vertebra


CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in SpineClass)
FOREGROUND: tuple[SpineClass, ...] = (SpineClass.V, SpineClass.T1)
NUM_CLASSES = len(SpineClass)

# Colours (RGB) used by overlays: V green, T1 red, as in the seed app.
CLASS_COLOURS: dict[SpineClass, tuple[int, int, int]] = {
    SpineClass.V: (0, 200, 0),
    SpineClass.T1: (230, 0, 0),
}

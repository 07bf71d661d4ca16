"""The vertebra-level label layout: one class per vertebra T1..L5 and one for the discs between them.

Models trained on landmark data (``inference.data.spineweb``) predict these 19 classes; the node's two
classes follow from them (T1 = the T1 class; V = every other vertebra and the discs), so V and T1 of a
vertebra-level model mean exactly what they mean for a two-class model, and the levels come for free.
"""

from __future__ import annotations

import cv2
import numpy as np

from inference.classes import SpineClass

VERTEBRAE: tuple[str, ...] = tuple(f"T{i}" for i in range(1, 13)) + tuple(f"L{i}" for i in range(1, 6))
DISC = "disc"
LEVEL_CLASS_ORDER: tuple[str, ...] = ("F", *VERTEBRAE, DISC)  # label value = index
NUM_LEVEL_CLASSES = len(LEVEL_CLASS_ORDER)  # 19
DISC_LABEL = NUM_LEVEL_CLASSES - 1


def vertebra_label(index: int) -> int:
    """Label value of the ``index``-th vertebra (0 = T1 .. 16 = L5)."""
    return index + 1


# label value in the level layout -> SpineClass value
LEVEL_TO_SPINE = np.array(
    [int(SpineClass.F), int(SpineClass.T1)] + [int(SpineClass.V)] * (NUM_LEVEL_CLASSES - 2), dtype=np.uint8
)


def to_spine_labels(levels: np.ndarray) -> np.ndarray:
    """F/V/T1 labels of a level-layout label image."""
    return LEVEL_TO_SPINE[levels]


def group_probabilities(probs: np.ndarray, class_order: list[str] | tuple[str, ...]) -> np.ndarray:
    """(N, C, H, W) softmax of a model with ``class_order`` -> (N, 3, H, W) in SpineClass order."""
    if tuple(class_order) == tuple(c.name for c in SpineClass):
        return probs
    if tuple(class_order) != LEVEL_CLASS_ORDER:
        raise ValueError(f"unknown class order {list(class_order)}")
    out = np.empty((probs.shape[0], 3, *probs.shape[2:]), np.float32)
    out[:, int(SpineClass.F)] = probs[:, 0]
    out[:, int(SpineClass.T1)] = probs[:, 1]
    out[:, int(SpineClass.V)] = probs[:, 2:].sum(axis=1)
    return out


def native_levels(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Level labels at native size: the most probable level class (vertebra or disc) at model resolution,
    nearest-resized, kept only where ``labels`` (native F/V/T1) is foreground and consistent with it."""
    rows, cols = labels.shape
    best = (probs[1:].argmax(axis=0) + 1).astype(np.uint8)  # among the level classes, background excluded
    levels = cv2.resize(best, (cols, rows), interpolation=cv2.INTER_NEAREST)
    levels[labels == int(SpineClass.F)] = 0
    levels[labels == int(SpineClass.T1)] = 1
    levels[(labels == int(SpineClass.V)) & (levels == 1)] = vertebra_label(1)  # V pixels are never T1
    return levels

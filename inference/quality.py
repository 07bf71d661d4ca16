"""The quality flag: is a prediction a plausible spine, or specks that must not be presented as a result?

Five checks on the native-resolution labels (thresholds per model, fitted on its validation split and
stored in the model card as ``quality_thresholds``; the defaults below apply to models without them):

* the column (V or T1) covers at least ``min_column_percent`` of the image;
* its largest connected piece holds at least ``min_largest_share`` of it (not fragmented);
* T1 is found: at least ``min_t1_share`` of the column's pixels;
* the flip agreement (Dice of the column with the mirrored image's prediction) is at least
  ``min_flip_dice``, when it was computed;
* T1's own flip agreement is at least ``min_t1_flip_dice``, when T1 is found and the flip agreement was
  computed: a mirror image that puts T1 on another vertebra shows a level the model is unsure of (on the
  validation split this catches T1 one vertebra off, which the column checks cannot see).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from inference.prediction import SPINE, ClassStats, Quality

# Defaults (conservative; per-model values fitted on validation replace them).
MIN_COLUMN_PERCENT = 0.5  # % of the image
MIN_LARGEST_SHARE = 0.75  # of the column's pixels in its largest 8-connected piece
MIN_T1_SHARE = 0.01  # T1 pixels / column pixels (T1 is about 1/25 of T1..L5 with discs)
MIN_FLIP_DICE = 0.6
MIN_T1_FLIP_DICE = 0.3  # T1 pixels of the image and of its mirror image, Dice


@dataclass(frozen=True)
class QualityThresholds:
    min_column_percent: float = MIN_COLUMN_PERCENT
    min_largest_share: float = MIN_LARGEST_SHARE
    min_t1_share: float = MIN_T1_SHARE
    min_flip_dice: float = MIN_FLIP_DICE
    min_t1_flip_dice: float = MIN_T1_FLIP_DICE

    @classmethod
    def from_card(cls, values: dict[str, Any] | None) -> QualityThresholds:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: float(v) for k, v in (values or {}).items() if k in known})

    def to_json(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class QualityFigures:
    """What the checks look at, for one prediction."""

    column_percent: float
    largest_share: float
    t1_share: float
    flip_dice: float | None
    t1_flip_dice: float | None = None


def figures(labels: np.ndarray, classes: dict[str, ClassStats]) -> QualityFigures:
    column = (labels > 0).astype(np.uint8)
    n = int(column.sum())
    largest = 0
    if n:
        count, _, stats, _ = cv2.connectedComponentsWithStats(column, connectivity=8)
        largest = int(stats[1:, cv2.CC_STAT_AREA].max()) if count > 1 else 0
    t1 = classes["T1"].pixels if "T1" in classes else 0
    return QualityFigures(
        column_percent=100.0 * n / max(1, labels.size),
        largest_share=largest / n if n else 0.0,
        t1_share=t1 / n if n else 0.0,
        flip_dice=classes[SPINE].flip_dice if SPINE in classes else None,
        t1_flip_dice=classes["T1"].flip_dice if "T1" in classes else None,
    )


def judge(f: QualityFigures, t: QualityThresholds) -> Quality:
    reasons: list[str] = []
    if f.column_percent < t.min_column_percent:
        reasons.append(f"vertebral column too small ({f.column_percent:.2f} % of the image)")
    elif f.largest_share < t.min_largest_share:
        reasons.append(f"vertebral column fragmented (largest piece {100 * f.largest_share:.0f} %)")
    column_found = f.column_percent >= t.min_column_percent
    if column_found and f.t1_share < t.min_t1_share:
        reasons.append("T1 not found")
    elif column_found and f.t1_flip_dice is not None and f.t1_flip_dice < t.min_t1_flip_dice:
        reasons.append(f"T1 level uncertain: the mirror image puts T1 elsewhere (T1 flip Dice {f.t1_flip_dice:.2f})")
    if f.flip_dice is not None and f.flip_dice < t.min_flip_dice:
        reasons.append(f"unstable under mirroring (flip Dice {f.flip_dice:.2f})")
    return Quality(not reasons, reasons)


def assess(labels: np.ndarray, classes: dict[str, ClassStats], thresholds: QualityThresholds) -> Quality:
    return judge(figures(labels, classes), thresholds)

"""Overlap metrics between a predicted and a reference label mask.

IoU (Jaccard) and Dice are only ever computed against a reference: a ground-truth mask (phantom, COCO,
a reader's SEG) or an explicitly named agreement target such as the flipped-input prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from inference.classes import FOREGROUND


@dataclass
class Overlap:
    """Pixel counts of one class in a prediction and a reference."""

    intersection: int = 0
    predicted: int = 0
    reference: int = 0

    @property
    def union(self) -> int:
        return self.predicted + self.reference - self.intersection

    @property
    def iou(self) -> float | None:
        return self.intersection / self.union if self.union else None

    @property
    def dice(self) -> float | None:
        total = self.predicted + self.reference
        return 2 * self.intersection / total if total else None

    def __iadd__(self, other: Overlap) -> Overlap:
        self.intersection += other.intersection
        self.predicted += other.predicted
        self.reference += other.reference
        return self


def overlap(pred: np.ndarray, ref: np.ndarray) -> Overlap:
    """Counts for two boolean masks of the same shape."""
    if pred.shape != ref.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {ref.shape}")
    return Overlap(int(np.count_nonzero(pred & ref)), int(np.count_nonzero(pred)), int(np.count_nonzero(ref)))


def class_overlaps(pred_labels: np.ndarray, ref_labels: np.ndarray) -> dict[str, Overlap]:
    """Per foreground class (V, T1) overlap of two label maps."""
    return {c.name: overlap(pred_labels == c, ref_labels == c) for c in FOREGROUND}


@dataclass
class OverlapSummary:
    """Accumulates overlaps over a data set: summed (as the seed did) and per-image means."""

    summed: dict[str, Overlap] = field(default_factory=lambda: {c.name: Overlap() for c in FOREGROUND})
    per_image: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: {c.name: [] for c in FOREGROUND})
    n_images: int = 0

    def add(self, pred_labels: np.ndarray, ref_labels: np.ndarray) -> dict[str, Overlap]:
        ovs = class_overlaps(pred_labels, ref_labels)
        for name, ov in ovs.items():
            self.summed[name] += ov
            if ov.union:
                self.per_image[name].append((ov.iou or 0.0, ov.dice or 0.0))
        self.n_images += 1
        return ovs

    def to_json(self) -> dict[str, dict[str, float | int | None]]:
        out: dict[str, dict[str, float | int | None]] = {}
        for name, ov in self.summed.items():
            images = self.per_image[name]
            out[name] = {
                "iou": _r(ov.iou),
                "dice": _r(ov.dice),
                "iou_mean_per_image": _r(float(np.mean([i for i, _ in images]))) if images else None,
                "dice_mean_per_image": _r(float(np.mean([d for _, d in images]))) if images else None,
                "intersection": ov.intersection,
                "predicted_pixels": ov.predicted,
                "reference_pixels": ov.reference,
            }
        return out


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


__all__ = ["Overlap", "OverlapSummary", "class_overlaps", "overlap"]

"""What a prediction is, without the model: labels, confidence and per-class figures (numpy only).

Kept apart from ``inference.engine`` (which needs PyTorch, seconds to import) so that the node's
receiver, writers and web page load without it; the engine re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from inference.analysis.metrics import overlap
from inference.classes import FOREGROUND

if TYPE_CHECKING:
    from inference.analysis.measure import Measurements

SPINE = "Spine"  # figures of the union V or T1 (the SEG's "Spine" segment)


@dataclass
class ClassStats:
    """Figures for one class of one prediction."""

    pixels: int
    coverage_percent: float
    area: float  # mm2 when a spacing is known, else pixels
    area_unit: str  # "mm2" or "pixels"
    mean_confidence: float | None  # mean max-softmax over the class's pixels
    flip_dice: float | None = None  # agreement with the flipped-input prediction
    flip_jaccard: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class Quality:
    """Whether a prediction is a plausible spine segmentation (``inference.quality`` decides)."""

    reliable: bool
    reasons: list[str] = field(default_factory=list)  # why not, in plain words (empty when reliable)

    @property
    def statement(self) -> str:
        if self.reliable:
            return "Segmentation passed the plausibility checks"
        return "No reliable segmentation was obtained: " + "; ".join(self.reasons)

    def to_json(self) -> dict[str, Any]:
        return {"reliable": self.reliable, "reasons": list(self.reasons)}


@dataclass
class Prediction:
    labels: np.ndarray  # uint8 (rows, columns), SpineClass values
    confidence: np.ndarray  # float32 max-softmax per pixel
    classes: dict[str, ClassStats]
    model: str
    model_version: str
    demo: bool
    inference_ms: float
    notes: list[str] = field(default_factory=list)
    quality: Quality = field(default_factory=lambda: Quality(True))
    levels: np.ndarray | None = None  # uint8 (rows, columns) level labels (analysis.levels) when the model has them
    measurements: Measurements | None = None  # vertebrae, Cobb angles, T1 tilt (level models, reliable only)
    forward_ms: float = 0.0  # of inference_ms, the models' forward passes (both passes, image and mirror)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "model_version": self.model_version,
            "demo": self.demo,
            "inference_ms": round(self.inference_ms, 1),
            "forward_ms": round(self.forward_ms, 1),
            "image_size": list(self.labels.shape),
            "classes": {k: v.to_json() for k, v in self.classes.items()},
            "quality": self.quality.to_json(),
            "measurements": self.measurements.to_json() if self.measurements is not None else None,
            "notes": self.notes,
        }


def labels_at_native(probs: np.ndarray, native: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize (C, h, w) probabilities to (rows, cols) plane by plane; return argmax labels and max prob."""
    rows, cols = native
    planes = [cv2.resize(np.ascontiguousarray(p), (cols, rows), interpolation=cv2.INTER_LINEAR) for p in probs]
    best = planes[0].copy()
    labels = np.zeros((rows, cols), np.uint8)
    for c in range(1, len(planes)):
        better = planes[c] > best
        labels[better] = c
        np.maximum(best, planes[c], out=best)
    return labels, best


def class_stats(
    labels: np.ndarray,
    confidence: np.ndarray,
    spacing_mm: tuple[float, float] | None,
    flipped: np.ndarray | None = None,
) -> dict[str, ClassStats]:
    total = labels.size
    pixel_area = spacing_mm[0] * spacing_mm[1] if spacing_mm else None
    out: dict[str, ClassStats] = {}
    # V and T1, and "Spine" (V or T1: the whole column, the SEG's first segment)
    regions = [(c.name, labels == c, None if flipped is None else flipped == c) for c in FOREGROUND]
    regions.append((SPINE, labels > 0, None if flipped is None else flipped > 0))
    for name, m, fm in regions:
        n = int(np.count_nonzero(m))
        stats = ClassStats(
            pixels=n,
            coverage_percent=100.0 * n / total,
            area=n * pixel_area if pixel_area else float(n),
            area_unit="mm2" if pixel_area else "pixels",
            mean_confidence=float(confidence[m].mean()) if n else None,
        )
        if fm is not None:
            ov = overlap(m, fm)
            stats.flip_dice, stats.flip_jaccard = ov.dice, ov.iou
        out[name] = stats
    return out


__all__ = ["SPINE", "ClassStats", "Prediction", "Quality", "class_stats", "labels_at_native"]

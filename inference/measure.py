"""Spine measurements from a level segmentation: vertebra corners, Cobb angles and T1 tilt.

Each vertebra (T1..L5) found in the level labels is reduced to a quadrilateral: the convex hull of its
largest connected piece simplified to four corners (the minimum-area rectangle when that fails); the
longer pair of opposite sides are its endplates (vertebral bodies are
wider than tall on an AP film), which gives the four corners the challenge's method
(``inference.cobb``) works on. Cobb angles need every vertebra from T1 to L5: with one missing they are
not reported (the reason is), never computed from a partial column.

``reportable`` then keeps only what the model has been shown to measure: Cobb angles when the SMAPE
recorded on its validation split (``metrics.validation.measurements`` in its card, written by ``spinenode
evaluate --data spineweb16:DIR --record validation``) is at most ``MAX_COBB_SMAPE_PERCENT``, the T1 tilt
when its validation MAE is at most ``MAX_T1_TILT_MAE_DEG``; otherwise the figure is withheld and a note
says why (a model with no recorded figures reports neither). The bounds are the targets of the
measurement issue, near what published landmark networks reach on this dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from inference.cobb import CobbAngle, cobb_angles, directions, endplate_tilt_deg
from inference.levels import VERTEBRAE, vertebra_label
from inference.spineweb import reorder_crossed

MAX_COBB_SMAPE_PERCENT = 12.0  # validated Cobb SMAPE above this: angles withheld
MAX_T1_TILT_MAE_DEG = 3.0  # validated T1 tilt mean absolute error above this: tilt withheld
MIN_VERTEBRA_PIXELS = 20  # smaller pieces are not a vertebra
APPROX_FRACTIONS = (0.02, 0.04, 0.06, 0.08, 0.1, 0.13, 0.16)  # polygon simplification tolerances (of perimeter)


@dataclass(frozen=True)
class Vertebra:
    name: str  # "T1" .. "L5"
    corners: np.ndarray  # (4, 2) TL, TR, BL, BR, pixels (x, y)
    tilt_deg: float  # left-to-right direction to the image horizontal, positive rising to the right

    @property
    def centre(self) -> tuple[float, float]:
        x, y = self.corners.mean(axis=0)
        return float(x), float(y)


@dataclass(frozen=True)
class Curve:
    angle_deg: float
    upper: str  # end vertebra names
    lower: str
    upper_endplate: np.ndarray  # (2, 2) the upper end vertebra's upper endplate (TL, TR), pixels
    lower_endplate: np.ndarray  # (2, 2) the lower end vertebra's lower endplate (BL, BR), pixels


@dataclass
class Measurements:
    vertebrae: list[Vertebra]
    cobb: list[Curve]  # main, then two secondary angles (the challenge's order); empty when not measurable
    t1_tilt_deg: float | None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "cobb": [{"angle_deg": round(c.angle_deg, 1), "upper": c.upper, "lower": c.lower} for c in self.cobb],
            "t1_tilt_deg": None if self.t1_tilt_deg is None else round(self.t1_tilt_deg, 1),
            "t1_tilt_convention": "T1 upper endplate to the image horizontal; positive rising to the image right",
            "vertebrae": [
                {"name": v.name, "centre": [round(c, 1) for c in v.centre], "tilt_deg": round(v.tilt_deg, 1)}
                for v in self.vertebrae
            ],
            "notes": list(self.notes),
        }


def vertebra_corners(levels: np.ndarray) -> dict[int, np.ndarray]:
    """Corners (4, 2) of each vertebra index (0 = T1) present in ``levels``. Each vertebra is examined in
    its own bounding box (one pass over the labels finds them all), not in the whole image."""
    ys, xs = np.nonzero(levels)
    values = levels[ys, xs]
    found: dict[int, np.ndarray] = {}
    for k in range(len(VERTEBRAE)):
        mine = values == vertebra_label(k)
        if int(np.count_nonzero(mine)) < MIN_VERTEBRA_PIXELS:
            continue
        y0, x0 = int(ys[mine].min()), int(xs[mine].min())
        box = levels[y0 : int(ys[mine].max()) + 1, x0 : int(xs[mine].max()) + 1]
        piece = (box == vertebra_label(k)).astype(np.uint8)
        count, comp, stats, _ = cv2.connectedComponentsWithStats(piece, connectivity=8)
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        if stats[largest, cv2.CC_STAT_AREA] < MIN_VERTEBRA_PIXELS:
            continue
        found[k] = _quadrilateral((comp == largest).astype(np.uint8)) + np.array([x0, y0], np.float64)
    return found


def _quadrilateral(piece: np.ndarray) -> np.ndarray:
    """Four corners (TL, TR, BL, BR) of one vertebra's mask: its convex hull simplified to four points
    (the minimum-area rectangle when it will not simplify to four)."""
    contours, _ = cv2.findContours(piece, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    hull = cv2.convexHull(max(contours, key=cv2.contourArea))
    perimeter = cv2.arcLength(hull, True)
    for fraction in APPROX_FRACTIONS:
        approx = cv2.approxPolyDP(hull, fraction * perimeter, True)
        if len(approx) == 4:
            return reorder_crossed(approx.reshape(4, 2).astype(np.float64))
        if len(approx) < 4:
            break
    return reorder_crossed(cv2.boxPoints(cv2.minAreaRect(hull)).astype(np.float64))


def _curve(c: CobbAngle, names: list[str], corners: np.ndarray) -> Curve:
    return Curve(
        c.angle_deg, names[c.upper], names[c.lower], corners[c.upper][[0, 1]].copy(), corners[c.lower][[2, 3]].copy()
    )


def measure(levels: np.ndarray) -> Measurements:
    """Vertebrae, Cobb angles and T1 tilt of a level label image (native size)."""
    found = vertebra_corners(levels)
    if not found:
        return Measurements([], [], None, ["no vertebra found"])
    ordered = sorted(found)
    corners = np.array([found[k] for k in ordered]) if ordered else np.zeros((0, 4, 2))
    tilts = np.degrees(np.arctan2(-directions(corners)[:, 1], directions(corners)[:, 0])) if ordered else []
    vertebrae = [Vertebra(VERTEBRAE[k], found[k], float(t)) for k, t in zip(ordered, tilts, strict=True)]
    notes: list[str] = []
    missing = [VERTEBRAE[k] for k in range(len(VERTEBRAE)) if k not in found]
    cobb: list[Curve] = []
    if missing:
        notes.append(f"Cobb angles not measured: vertebrae not found ({', '.join(missing)})")
    else:
        cobb = [_curve(c, list(VERTEBRAE), corners) for c in cobb_angles(corners, levels.shape[0])]
    t1 = endplate_tilt_deg(found[0]) if 0 in found else None
    if t1 is None:
        notes.append("T1 tilt not measured: T1 not found")
    return Measurements(vertebrae, cobb, t1, notes)


def validated_figures(card_metrics: dict[str, Any]) -> tuple[float | None, float | None]:
    """The Cobb SMAPE (%) and T1 tilt MAE (degrees) recorded on the model's validation split, if any."""
    measured = (card_metrics.get("validation") or {}).get("measurements") or {}
    smape = (measured.get("cobb") or {}).get("smape_percent")
    tilt = (measured.get("t1_tilt") or {}).get("mae_deg")
    return (None if smape is None else float(smape)), (None if tilt is None else float(tilt))


def reportable(measurements: Measurements, card_metrics: dict[str, Any]) -> Measurements:
    """``measurements`` less what the model's validation figures do not support (see the module docstring)."""
    smape, tilt_mae = validated_figures(card_metrics)
    notes = list(measurements.notes)
    cobb, t1_tilt = measurements.cobb, measurements.t1_tilt_deg
    if cobb and (smape is None or smape > MAX_COBB_SMAPE_PERCENT):
        shown = "no validation figure recorded" if smape is None else f"validation Cobb SMAPE {smape:.1f} %"
        notes.append(f"Cobb angles withheld: {shown} (reported at {MAX_COBB_SMAPE_PERCENT:.0f} % or less)")
        cobb = []
    if t1_tilt is not None and (tilt_mae is None or tilt_mae > MAX_T1_TILT_MAE_DEG):
        shown = "no validation figure recorded" if tilt_mae is None else f"validation T1 tilt MAE {tilt_mae:.1f} deg"
        notes.append(f"T1 tilt withheld: {shown} (reported at {MAX_T1_TILT_MAE_DEG:.0f} deg or less)")
        t1_tilt = None
    return replace(measurements, cobb=cobb, t1_tilt_deg=t1_tilt, notes=notes)

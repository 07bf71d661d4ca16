"""Spine measurements from a level segmentation: vertebra corners, Cobb angles and T1 tilt.

Each vertebra (T1..L5) found in the level labels is located by the quadrilateral of its largest
connected piece (its convex hull simplified to four corners, the minimum-area rectangle when that
fails). A predicted vertebra's outline is too ragged for its own tilt: one vertebra off by 20 degrees
makes a 20-degree Cobb angle. Its tilt is therefore read off the column instead: the centre line of the
whole predicted column (V and T1, row by row), smoothed with a Gaussian ``CENTRELINE_SIGMA`` of the
column's height long; each vertebra's endplates are taken perpendicular to that line at its centre
(on the validation split this brings the main-curve error from ~35 to ~4 degrees; from the true masks
it costs ~1 degree). These corners feed the challenge's method (``inference.analysis.cobb``). Cobb angles need
every vertebra from T1 to L5: with one missing they are not reported (the reason is), never computed
from a partial column. T1's tilt is mostly (``T1_EDGE_WEIGHT``) that of a line fitted to its upper
edge, the rest the centre line's: T1 is the one vertebra the second pass (``inference.top_pass``) draws at
higher resolution.

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

from inference.analysis.cobb import CobbAngle, cobb_angles, directions
from inference.analysis.levels import VERTEBRAE, vertebra_label
from inference.data.spineweb import reorder_crossed

MAX_COBB_SMAPE_PERCENT = 12.0  # validated Cobb SMAPE above this: angles withheld
MAX_T1_TILT_MAE_DEG = 3.0  # validated T1 tilt mean absolute error above this: tilt withheld
MIN_VERTEBRA_PIXELS = 20  # smaller pieces are not a vertebra
CENTRELINE_SIGMA = 0.05  # centre-line smoothing, of the column's height (chosen on the training split)
APPROX_FRACTIONS = (0.02, 0.04, 0.06, 0.08, 0.1, 0.13, 0.16)  # polygon simplification tolerances (of perimeter)
EDGE_TRIM = 0.2  # T1's upper edge is fitted over its middle columns: this share of its width left out each side
MIN_EDGE_COLUMNS = 3  # fewer columns than this: no edge line
# T1 tilt: this weight on the fitted upper edge, the rest on the centre line (chosen on the training split's
# predictions: MAE 3.9 deg, against 5.5 for the earlier mean of the quadrilateral's upper side and the centre line)
T1_EDGE_WEIGHT = 0.8


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

    @property
    def is_curve(self) -> bool:
        """False for the challenge's "no curve": 0 degrees, one vertebra as both end vertebrae (a secondary
        angle whose end vertebra is T1 or L5). Its two endplates are one vertebra's: no lines to draw."""
        return self.upper != self.lower

    @property
    def endplates(self) -> list[np.ndarray]:
        """The lines the angle is read between: both end vertebrae's outer endplates; none for no curve."""
        return [self.upper_endplate, self.lower_endplate] if self.is_curve else []


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
    """Corners (4, 2) of each vertebra index (0 = T1) present in ``levels``."""
    return _corners(_pieces(levels))


def _corners(pieces: dict[int, tuple[np.ndarray, int, int]]) -> dict[int, np.ndarray]:
    return {k: _quadrilateral(piece) + np.array([x0, y0], np.float64) for k, (piece, x0, y0) in pieces.items()}


def _pieces(levels: np.ndarray) -> dict[int, tuple[np.ndarray, int, int]]:
    """Each vertebra index's largest connected piece (uint8 mask in its bounding box) and the box's
    left and top. Each vertebra is examined in its own bounding box (one pass over the labels finds them
    all), not in the whole image."""
    ys, xs = np.nonzero(levels)
    values = levels[ys, xs]
    found: dict[int, tuple[np.ndarray, int, int]] = {}
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
        found[k] = ((comp == largest).astype(np.uint8), x0, y0)
    return found


def upper_edge_tilt_deg(piece: np.ndarray) -> float | None:
    """Signed tilt (degrees, rising to the right positive) of the line fitted (least squares) to a mask's
    top edge - the topmost pixel of each column - over its middle columns (``EDGE_TRIM`` left out at each
    side, where the corners round off); None when too few columns remain."""
    columns = np.flatnonzero(piece.any(axis=0))
    if len(columns) == 0:
        return None
    n = int(columns[-1]) - int(columns[0]) + 1
    inner = columns[(columns - columns[0] >= EDGE_TRIM * n) & (columns - columns[0] <= (1 - EDGE_TRIM) * n)]
    if len(inner) < MIN_EDGE_COLUMNS:
        return None
    top = np.argmax(piece[:, inner] > 0, axis=0).astype(np.float64)
    slope = float(np.polyfit(inner.astype(np.float64), top, 1)[0])
    return float(np.degrees(np.arctan(-slope)))  # image y grows downwards


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


def centreline_tilts(levels: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Endplate direction (radians, image axes: x right, y down) perpendicular to the smoothed centre line
    of the column at each of ``centres`` (n, 2)."""
    column = levels > 0
    present = np.nonzero(column.any(axis=1))[0]
    top, bottom = int(present.min()), int(present.max())
    rows = np.arange(top, bottom + 1)
    counts = column[top : bottom + 1].sum(axis=1)
    xs = (column[top : bottom + 1] * np.arange(levels.shape[1])).sum(axis=1) / np.maximum(counts, 1)
    xs = np.interp(rows, rows[counts > 0], xs[counts > 0])  # rows without column: bridged
    sigma = max(1.0, CENTRELINE_SIGMA * (bottom - top + 1))
    radius = int(3 * sigma)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    smooth = np.convolve(np.pad(xs, radius, mode="edge"), kernel / kernel.sum(), mode="valid")
    slope = np.gradient(smooth)  # dx/dy of the centre line
    at = np.clip(np.round(centres[:, 1]).astype(int) - top, 0, len(slope) - 1)
    return -np.arctan(slope[at])  # the endplate (1, -dx/dy) is perpendicular to the axis (dx/dy, 1)


def axis_corners(corners: np.ndarray, tilts: np.ndarray) -> np.ndarray:
    """Each vertebra's corners rebuilt around its centre with its width and height, its endplates at ``tilts``."""
    centre = corners.mean(axis=1)
    width = (
        np.linalg.norm(corners[:, 1] - corners[:, 0], axis=1) / 2
        + np.linalg.norm(corners[:, 3] - corners[:, 2], axis=1) / 2
    )
    height = (
        np.linalg.norm(corners[:, 2] - corners[:, 0], axis=1) / 2
        + np.linalg.norm(corners[:, 3] - corners[:, 1], axis=1) / 2
    )
    along = np.stack([np.cos(tilts), np.sin(tilts)], axis=1) * (width / 2)[:, None]
    down = np.stack([-np.sin(tilts), np.cos(tilts)], axis=1) * (height / 2)[:, None]
    return np.stack(
        [centre - along - down, centre + along - down, centre - along + down, centre + along + down], axis=1
    )


def measure(levels: np.ndarray) -> Measurements:
    """Vertebrae, Cobb angles and T1 tilt of a level label image (native size)."""
    pieces = _pieces(levels)
    found = _corners(pieces)
    if not found:
        return Measurements([], [], None, ["no vertebra found"])
    ordered = sorted(found)
    quads = np.array([found[k] for k in ordered])
    corners = axis_corners(quads, centreline_tilts(levels, quads.mean(axis=1)))
    tilts = np.degrees(np.arctan2(-directions(corners)[:, 1], directions(corners)[:, 0]))
    vertebrae = [Vertebra(VERTEBRAE[k], c, float(t)) for k, c, t in zip(ordered, corners, tilts, strict=True)]
    notes: list[str] = []
    missing = [VERTEBRAE[k] for k in range(len(VERTEBRAE)) if k not in found]
    cobb: list[Curve] = []
    if missing:
        notes.append(f"Cobb angles not measured: vertebrae not found ({', '.join(missing)})")
    else:
        cobb = [_curve(c, list(VERTEBRAE), corners) for c in cobb_angles(corners, levels.shape[0])]
    t1 = t1_tilt_deg(pieces[0][0], float(tilts[0])) if 0 in found else None
    if t1 is None:
        notes.append("T1 tilt not measured: T1 not found")
    return Measurements(vertebrae, cobb, t1, notes)


def t1_tilt_deg(piece: np.ndarray, centreline_deg: float) -> float:
    """T1 tilt: ``T1_EDGE_WEIGHT`` on the line fitted to T1's upper edge, the rest on the centre line's
    tilt there (the centre line alone when the edge is too short to fit)."""
    edge = upper_edge_tilt_deg(piece)
    if edge is None:
        return centreline_deg
    return T1_EDGE_WEIGHT * edge + (1 - T1_EDGE_WEIGHT) * centreline_deg


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

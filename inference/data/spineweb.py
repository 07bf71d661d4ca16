"""SpineWeb dataset 16 (the AASCE 2019 / BoostNet landmarks): real AP spine radiographs with the four
corners of each vertebra T1..L5.

Layout (``DIR``): ``images/*.jpg``, ``labels/filenames.csv`` (one image name per row),
``labels/landmarks.csv`` (136 numbers per row: 68 x then 68 y, as fractions of width / height; four
points per vertebra - top-left, top-right, bottom-left, bottom-right - from T1 to L5) and
``labels/angles.csv`` (three Cobb angles per row).

Repairs (as the data's README describes): vertebrae are sorted by the mean y of their corners; each
vertebra keeps its corners in the file's order, except where its quadrilateral TL-TR-BR-BL crosses
itself: then the corners are put in angle order around their centre and the longer pair of opposite
edges becomes the endplates. Images whose vertebra centres are implausibly spaced (two vertebrae on top
of each other, or a gap of several vertebra heights) are excluded, with the reason.

Masks: each vertebra's quadrilateral gets its own label (``inference.analysis.levels``); the disc between two
consecutive vertebrae (from one's bottom corners to the next one's top corners) gets the disc label, so
V (T2..L5 and every disc) and T1 together are one continuous column.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from inference.analysis.levels import DISC_LABEL, VERTEBRAE, vertebra_label
from inference.preprocess import from_image_file

N_VERTEBRAE = len(VERTEBRAE)  # 17
N_POINTS = 4 * N_VERTEBRAE  # 68
# A centre-to-centre gap compared with its neighbouring gaps (vertebra heights change slowly along the spine):
MIN_GAP_RATIO = 0.32  # below: two vertebrae on top of each other (this split: 6 at <= 0.08, 2 at 0.30, next 0.38)
MAX_GAP_RATIO = 2.2  # above: a missing vertebra
SPLIT_SEED = 16  # the fixed train/validation split (by patient) of this dataset
VALIDATION_IMAGES = 100  # at least 80 (the issue); ~20 % of the 481


class SpineWebError(ValueError):
    """A SpineWeb directory or row that cannot be read."""


@dataclass
class Record:
    """One image's landmarks after the order repairs: ``corners[k]`` = TL, TR, BL, BR of vertebra k (pixels)."""

    index: int  # row in filenames.csv
    name: str
    corners: np.ndarray  # (17, 4, 2) float64, x/y in pixels
    angles: tuple[float, float, float]
    size: tuple[int, int]  # (rows, columns)
    repairs: list[str] = field(default_factory=list)

    @property
    def patient(self) -> str:
        """The patient key: ``... 162 A AP.jpg`` and ``... 162 B AP.jpg`` are one patient."""
        stem = Path(self.name).stem
        parts = stem.rsplit(" ", 2)
        return parts[0] if len(parts) == 3 else stem


@dataclass
class Exclusion:
    index: int
    name: str
    reason: str


def _segments_cross(p1: np.ndarray, p2: np.ndarray, p3: np.ndarray, p4: np.ndarray) -> bool:
    def orient(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
        return float((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))

    d1, d2 = orient(p3, p4, p1), orient(p3, p4, p2)
    d3, d4 = orient(p1, p2, p3), orient(p1, p2, p4)
    return d1 * d2 < 0 and d3 * d4 < 0


def self_intersecting(quad: np.ndarray) -> bool:
    """Whether TL-TR-BR-BL (``quad`` in TL, TR, BL, BR order) crosses itself."""
    tl, tr, bl, br = quad
    return _segments_cross(tl, tr, br, bl) or _segments_cross(tr, br, bl, tl)


def reorder_crossed(quad: np.ndarray) -> np.ndarray:
    """Corners of a self-crossing quadrilateral in TL, TR, BL, BR order: angle order around the centre,
    the longer pair of opposite edges taken as the endplates."""
    centre = quad.mean(axis=0)
    ring = quad[np.argsort(np.arctan2(quad[:, 1] - centre[1], quad[:, 0] - centre[0]))]
    edges = [(ring[i], ring[(i + 1) % 4]) for i in range(4)]
    length = [float(np.linalg.norm(a - b)) for a, b in edges]
    pair = (0, 2) if length[0] + length[2] >= length[1] + length[3] else (1, 3)
    plates = sorted((edges[pair[0]], edges[pair[1]]), key=lambda e: (e[0][1] + e[1][1]) / 2)
    (t0, t1), (b0, b1) = plates
    tl, tr = sorted((t0, t1), key=lambda p: p[0])
    bl, br = sorted((b0, b1), key=lambda p: p[0])
    return np.stack([tl, tr, bl, br])


def repair(corners: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Sort vertebrae by mean y and untangle self-crossing ones; return the corners and what was done."""
    notes: list[str] = []
    order = np.argsort(corners[:, :, 1].mean(axis=1), kind="stable")
    if (order != np.arange(len(order))).any():
        notes.append("vertebrae re-ordered by mean y")
    corners = corners[order].copy()
    for k in range(len(corners)):
        if self_intersecting(corners[k]):
            corners[k] = reorder_crossed(corners[k])
            notes.append(f"vertebra {k + 1}: self-crossing corners re-ordered")
    return corners, notes


def spacing_problem(corners: np.ndarray) -> str | None:
    """Why the vertebra centres are implausibly spaced, or None."""
    centres = corners.mean(axis=1)
    gaps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    if float(np.median(gaps)) <= 0:
        return "all vertebrae at one point"
    local = []
    for k in range(len(gaps)):
        neighbours = [gaps[j] for j in (k - 1, k + 1) if 0 <= j < len(gaps)]
        local.append(float(gaps[k] / max(float(np.median(neighbours)), 1e-9)))
    k = int(np.argmin(local))
    if local[k] < MIN_GAP_RATIO:
        return f"vertebrae {k + 1} and {k + 2} on top of each other (gap {local[k]:.2f} x its neighbours')"
    k = int(np.argmax(local))
    if local[k] > MAX_GAP_RATIO:
        return f"gap of {local[k]:.1f} x its neighbours' between vertebrae {k + 1} and {k + 2}"
    return None


def _quad(c: np.ndarray) -> np.ndarray:
    tl, tr, bl, br = c
    return np.round(np.stack([tl, tr, br, bl])).astype(np.int32)


def level_mask(corners: np.ndarray, size: tuple[int, int], scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Label image (rows, cols) of vertebra levels and discs from corners in pixels (scaled by (sx, sy))."""
    mask = np.zeros(size, np.uint8)
    pts = corners * np.asarray(scale, np.float64)
    for k in range(len(pts) - 1):  # discs first: a vertebra wins where they overlap
        disc = np.stack([pts[k][2], pts[k][3], pts[k + 1][0], pts[k + 1][1]])  # bottom of k, top of k+1
        cv2.fillConvexPoly(mask, cv2.convexHull(np.round(disc).astype(np.int32)), DISC_LABEL)
    for k in reversed(range(len(pts))):  # T1 last: the first vertebra's quadrilateral is T1
        cv2.fillPoly(mask, [_quad(pts[k])], vertebra_label(k))
    return mask


class SpineWeb:
    """The records of a SpineWeb dataset 16 directory (read once; images loaded on demand)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        labels = root / "labels"
        for required in (root / "images", labels / "filenames.csv", labels / "landmarks.csv"):
            if not required.exists():
                raise SpineWebError(f"not a SpineWeb dataset 16 directory: {required} missing")
        names = [r[0] for r in csv.reader((labels / "filenames.csv").open()) if r]
        rows = [r for r in csv.reader((labels / "landmarks.csv").open()) if r]
        angle_file = labels / "angles.csv"
        angles = [r for r in csv.reader(angle_file.open()) if r] if angle_file.is_file() else [[]] * len(names)
        if not (len(names) == len(rows) == len(angles)):
            raise SpineWebError(
                f"filenames.csv ({len(names)} rows), landmarks.csv ({len(rows)}) and angles.csv ({len(angles)}) differ"
            )
        self.records: list[Record] = []
        self.exclusions: list[Exclusion] = []
        for i, (name, row, angle_row) in enumerate(zip(names, rows, angles, strict=True)):
            try:
                values = np.array([float(v) for v in row], np.float64)
                ang = tuple(float(a) for a in angle_row) if angle_row else (float("nan"),) * 3
            except ValueError:
                raise SpineWebError(f"landmarks.csv row {i + 1} ({name}): not all numbers") from None
            if values.size != 2 * N_POINTS or len(ang) != 3:
                raise SpineWebError(
                    f"row {i + 1} ({name}): expected {2 * N_POINTS} landmark values and 3 angles, "
                    f"got {values.size} and {len(ang)}"
                )
            path = root / "images" / name
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if path.is_file() else None
            if image is None:
                self.exclusions.append(Exclusion(i, name, "image missing or unreadable"))
                continue
            rows_, cols = image.shape[:2]
            xy = np.stack([values[:N_POINTS] * cols, values[N_POINTS:] * rows_], axis=1).reshape(N_VERTEBRAE, 4, 2)
            corners, notes = repair(xy)
            problem = spacing_problem(corners)
            if problem:
                self.exclusions.append(Exclusion(i, name, problem))
                continue
            self.records.append(Record(i, name, corners, ang, (rows_, cols), notes))

    @property
    def repaired(self) -> list[Record]:
        return [r for r in self.records if r.repairs]

    def split(self, seed: int = SPLIT_SEED, n_val: int = VALIDATION_IMAGES) -> tuple[list[int], list[int]]:
        """Positions (into ``records``) of the training and validation images; by patient, so that the two
        images of one patient fall on the same side."""
        patients = sorted({r.patient for r in self.records})
        order = np.random.default_rng(seed).permutation(len(patients))
        val_patients: set[str] = set()
        count = {p: 0 for p in patients}
        for r in self.records:
            count[r.patient] += 1
        n = 0
        for k in order:
            if n >= n_val:
                break
            val_patients.add(patients[k])
            n += count[patients[k]]
        val = [i for i, r in enumerate(self.records) if r.patient in val_patients]
        train = [i for i, r in enumerate(self.records) if r.patient not in val_patients]
        return train, val

    def image(self, record: Record) -> np.ndarray:
        return from_image_file(self.root / "images" / record.name).image

    def summary(self) -> dict[str, object]:
        return {
            "images": len(self.records) + len(self.exclusions),
            "used": len(self.records),
            "excluded": [{"index": e.index, "name": e.name, "reason": e.reason} for e in self.exclusions],
            "repaired": len(self.repaired),
        }

    def iter_samples(self, positions: list[int]) -> Iterator[tuple[Record, np.ndarray, np.ndarray]]:
        """(record, grey image in [0, 1], level mask) at native size."""
        for p in positions:
            r = self.records[p]
            yield r, self.image(r), level_mask(r.corners, r.size)

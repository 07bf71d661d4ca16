"""The top-of-spine pass: T1 found again at higher resolution, in a square window around the first pass's T1.

Why: at the whole-image model's resolution T1 is a few dozen pixels and the first rib, which tells T1
from C7, is barely visible; most of the first pass's T1 misses on the validation split call C7 (or T2)
T1. The second pass looks at a window ``WINDOW_WIDTHS`` T1-widths wide around where the first pass put
T1 (or, without a T1, the top of its column), at ``TOP_INPUT`` pixels: about three times the first
pass's resolution. Its model predicts three classes in that window (background, T1, the rest of the
column) and was trained on windows whose centre is displaced by up to ``MAX_SHIFT_SPANS`` vertebrae from
the true T1, so it has to pick T1 among the vertebrae it sees.

``refine`` then merges: when the second pass finds a T1 (a piece of at least ``MIN_T1_PIXELS`` at
native size), that piece becomes T1; the first pass's column above it is cervical spine and becomes
background; the first pass's old T1 below it becomes column; the vertebra levels below are renumbered
top-down from the new T1 (the first pass's level pieces in order), so the level names follow T1.
Without a T1 from the second pass the first pass's result stands unchanged. For a model with
``mirror_average`` (the engine) the image's window also goes through mirrored and the T1 probability is the
mean of the two; the mirror image's own window, checked for agreement, is not averaged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from inference.analysis.boxes import bounding_box
from inference.analysis.levels import DISC_LABEL, NUM_LEVEL_CLASSES, VERTEBRAE, vertebra_label
from inference.classes import SpineClass

TOP_INPUT = (256, 256)  # the second pass's model input (H, W)
WINDOW_WIDTHS = 4.0  # window side in widths of the anchor vertebra
MAX_SHIFT_SPANS = 1.6  # training windows: centre up to this many vertebra spacings from the true T1
MIN_ANCHOR_PIXELS = 20  # a first-pass T1 smaller than this is no anchor: the column's top is used
TOP_ROWS_WIDTHS = 0.7  # without T1: the column's top rows, this many column widths tall, are the anchor
BAND_MARGIN = 8  # the cervical band above the new T1 reaches this fraction (1/8) of the image width sideways
MIN_T1_PIXELS = 200  # the second pass's T1 must be at least this large at native size to replace the first's


@dataclass(frozen=True)
class Anchor:
    """Where a window is centred (native pixels) and how wide the vertebra there is."""

    x: float
    y: float
    width: float


def anchor_of(levels: np.ndarray) -> Anchor | None:
    """The first pass's T1 (centre, left-to-right extent), or the top of its column; None without one."""
    t1 = levels == vertebra_label(0)
    if int(np.count_nonzero(t1)) >= MIN_ANCHOR_PIXELS:
        ys, xs = np.nonzero(t1)
        return Anchor(float(xs.mean()), float(ys.mean()), float(xs.max() - xs.min() + 1))
    column = levels > 0
    if int(np.count_nonzero(column)) < MIN_ANCHOR_PIXELS:
        return None
    count, comp, stats, _ = cv2.connectedComponentsWithStats(column.astype(np.uint8), connectivity=8)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    top = int(stats[largest, cv2.CC_STAT_TOP])
    ys, xs = np.nonzero(comp == largest)
    first = xs[ys == top]
    row_width = float(max(8, first.max() - first.min() + 1))
    near = ys <= top + TOP_ROWS_WIDTHS * max(row_width, float(stats[largest, cv2.CC_STAT_WIDTH]) / 2)
    width = float(xs[near].max() - xs[near].min() + 1)
    return Anchor(float(xs[near].mean()), float(ys[near].mean()), width)


def window_matrix(anchor: Anchor, angle_deg: float = 0.0) -> np.ndarray:
    """2x3 affine map from native pixels to the second pass's input, centred on ``anchor``."""
    h, w = TOP_INPUT
    side = WINDOW_WIDTHS * max(anchor.width, 1.0)
    scale = min(h, w) / side
    m = cv2.getRotationMatrix2D((anchor.x, anchor.y), angle_deg, scale)
    m[0, 2] += w / 2 - anchor.x
    m[1, 2] += h / 2 - anchor.y
    return m


def window(image: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The second pass's grey input (H, W) float32 cut from a [0, 1] image with ``window_matrix``."""
    h, w = TOP_INPUT
    return cv2.warpAffine(image.astype(np.float32), m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0.0)


def _largest(mask: np.ndarray) -> np.ndarray:
    count, comp, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros(mask.shape, bool)
    return comp == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def renumber(levels: np.ndarray, t1: np.ndarray) -> np.ndarray:
    """Level labels with ``t1`` as T1 and the first pass's other vertebra pieces below it named T2, T3, ...
    in top-down order (by centre); the column above the new T1 (in a band around it) becomes background;
    the old T1 below it, pieces above the new T1's centre and vertebrae past L5 keep the column, labelled as
    disc (no level). Works in the bounding box of the column."""
    box = bounding_box((levels > 0) | t1)
    assert box is not None, "renumber needs a T1"
    out = levels.copy()
    out[box] = _renumbered(levels[box], t1[box], levels.shape[1] // BAND_MARGIN)
    return out


def _renumbered(levels: np.ndarray, t1: np.ndarray, margin: int) -> np.ndarray:
    cols = np.nonzero(t1.any(axis=0))[0]
    top = int(np.nonzero(t1.any(axis=1))[0].min())
    band = np.zeros(levels.shape, bool)
    band[:top, max(0, int(cols.min()) - margin) : int(cols.max()) + 1 + margin] = True
    keep = ~band & ~t1
    counts, row_sums = level_rows(levels, keep)
    t1_rows = np.count_nonzero(t1, axis=1)
    t1_centre = float(t1_rows @ np.arange(levels.shape[0])) / float(t1_rows.sum())
    lut = np.arange(256, dtype=np.uint8)  # cv2.LUT's table size for 8-bit labels
    lut[vertebra_label(0) : DISC_LABEL] = DISC_LABEL  # every vertebra: column without a level, unless named below
    pieces = sorted(
        (row_sums[label] / counts[label], label)
        for label in range(vertebra_label(1), DISC_LABEL)  # the first pass's T2 .. L5 (its T1 is no longer T1)
        if counts[label]
    )
    name = 1
    for centre, label in pieces:
        if centre <= t1_centre or name >= len(VERTEBRAE):
            continue  # above the new T1's centre or past L5
        lut[label] = vertebra_label(name)
        name += 1
    out = np.where(keep, cv2.LUT(levels, lut), levels)
    out[band & (levels > 0)] = 0  # cervical: the column starts at T1
    out[t1] = vertebra_label(0)
    return out


def level_rows(levels: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per level label, its pixel count where ``keep`` and the sum of those pixels' row numbers (one 2-D
    histogram of label and row; exact integers: float32 row numbers are exact below 2**24)."""
    rows = levels.shape[0]
    row_index = np.ascontiguousarray(np.broadcast_to(np.arange(rows, dtype=np.float32)[:, None], levels.shape))
    hist = cv2.calcHist(
        [levels.astype(np.float32), row_index],
        [0, 1],
        keep.astype(np.uint8),
        [NUM_LEVEL_CLASSES, rows],
        [0, NUM_LEVEL_CLASSES, 0, rows],
    ).astype(np.float64)
    return hist.sum(axis=1), hist @ np.arange(rows, dtype=np.float64)


def refine(levels: np.ndarray, t1_probability: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """New level labels and the T1 probability at native size from the second pass's T1 probability
    (window size), or None (no T1 found there). The probability is mapped back only over the window's
    footprint on the image (zero elsewhere, as the whole-image mapping would give)."""
    rows, cols = levels.shape
    box = _footprint(m, (rows, cols))
    if box is None:
        return None
    y0, y1, x0, x1 = box
    to_window = m.astype(np.float64) @ np.array([[1.0, 0.0, x0], [0.0, 1.0, y0], [0.0, 0.0, 1.0]])
    part = cv2.warpAffine(
        t1_probability.astype(np.float32),
        to_window,
        (x1 - x0, y1 - y0),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderValue=0.0,
    )
    piece = _largest(part > 0.5)
    if int(np.count_nonzero(piece)) < MIN_T1_PIXELS:
        return None
    native = np.zeros((rows, cols), np.float32)
    native[y0:y1, x0:x1] = part
    t1 = np.zeros((rows, cols), bool)
    t1[y0:y1, x0:x1] = piece
    return renumber(levels, t1), native


def _footprint(m: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The native rows and columns (y0, y1, x0, x1) the window of ``m`` covers, a pixel of interpolation
    around it, clipped to the image; None when it lies outside."""
    h, w = TOP_INPUT
    corners = np.array([[0.0, 0.0], [w, 0.0], [0.0, h], [w, h]]) - 0.5
    native = cv2.transform(corners[None], cv2.invertAffineTransform(m))[0]
    x0, y0 = np.floor(native.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(native.max(axis=0)).astype(int) + 2
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(shape[1], x1), min(shape[0], y1)
    return (int(y0), int(y1), int(x0), int(x1)) if x0 < x1 and y0 < y1 else None


def second_pass(
    probabilities: Callable[[np.ndarray], np.ndarray],
    images: list[np.ndarray],
    levels: list[np.ndarray],
    mirror_average: bool = False,
) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """``refine`` for each (grey image, first-pass levels), the windows in one batch through
    ``probabilities`` ((N, 3, H, W) in, (N, 3, H, W) SpineClass-order softmax out). With ``mirror_average``
    the first image's window also goes through mirrored, and its T1 probability is the mean of the two
    (the others, e.g. the mirror image checked for agreement, keep their own)."""
    anchors = [anchor_of(lv) for lv in levels]
    todo = [i for i, a in enumerate(anchors) if a is not None]
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(images)
    if not todo:
        return out
    matrices = {i: window_matrix(a) for i, a in enumerate(anchors) if a is not None}
    windows = [window(images[i], matrices[i]) for i in todo]
    averaged = mirror_average and todo[0] == 0
    if averaged:
        windows.append(windows[0][:, ::-1])
    batch = np.stack([np.repeat(w[None], 3, axis=0) for w in windows])
    probs = probabilities(np.ascontiguousarray(batch))[:, int(SpineClass.T1)]
    if averaged:
        probs[0] = 0.5 * (probs[0] + probs[-1][:, ::-1])
    for j, i in enumerate(todo):
        out[i] = refine(levels[i], probs[j], matrices[i])
    return out


def spine_labels(levels: np.ndarray) -> np.ndarray:
    """F/V/T1 labels of refined level labels."""
    labels = np.full(levels.shape, int(SpineClass.F), np.uint8)
    labels[levels > 0] = int(SpineClass.V)
    labels[levels == vertebra_label(0)] = int(SpineClass.T1)
    return labels

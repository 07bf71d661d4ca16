"""The top-of-spine second pass: its window, the merge when it finds T1 one vertebra off, and the shortcuts
that make the merge fast (the probability mapped back over the window only, one histogram for the levels)."""

from __future__ import annotations

import cv2
import numpy as np

from inference.analysis.levels import DISC_LABEL, vertebra_label
from inference.classes import SpineClass
from inference.top_pass import (
    MIN_T1_PIXELS,
    TOP_INPUT,
    anchor_of,
    level_rows,
    refine,
    second_pass,
    spine_labels,
    window,
    window_matrix,
)

BOX_H, GAP, WIDTH, LEFT, TOP = 30, 10, 60, 100, 20  # vertebra boxes down a straight column


def box(i: int) -> tuple[slice, slice]:
    y = TOP + i * (BOX_H + GAP)
    return slice(y, y + BOX_H), slice(LEFT, LEFT + WIDTH)


def first_pass_calling_c7_t1() -> np.ndarray:
    """Eighteen vertebrae C7..L5; the first pass named C7 "T1" and every vertebra below one level too high
    (L4 "L5"), and missed L5; discs between them."""
    levels = np.zeros((TOP + 18 * (BOX_H + GAP) + 20, 300), np.uint8)
    for i in range(17):
        ys, xs = box(i)
        levels[ys.stop : ys.stop + GAP, xs] = DISC_LABEL
        levels[ys, xs] = vertebra_label(i)  # box 0 is C7, box i is the true vertebra i-1
    return levels


def t1_probability_in_window(levels: np.ndarray, true_t1: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    anchor = anchor_of(levels)
    assert anchor is not None
    m = window_matrix(anchor)
    mask = np.zeros(levels.shape, np.float32)
    mask[true_t1] = 1.0
    h, w = TOP_INPUT
    return cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_LINEAR), m


def test_the_window_is_centred_on_the_first_pass_t1() -> None:
    levels = first_pass_calling_c7_t1()
    anchor = anchor_of(levels)
    assert anchor is not None
    ys, xs = box(0)
    assert anchor.width == WIDTH and abs(anchor.y - (ys.start + ys.stop - 1) / 2) < 1
    image = np.zeros(levels.shape, np.float32)
    image[ys, xs] = 1.0
    cut = window(image, window_matrix(anchor))
    assert cut.shape == TOP_INPUT and cut[TOP_INPUT[0] // 2, TOP_INPUT[1] // 2] == 1.0  # the anchor at the centre
    without_t1 = levels.copy()
    without_t1[without_t1 == vertebra_label(0)] = 0
    top = anchor_of(without_t1)  # no T1: the top of the column
    assert top is not None and top.y < box(2)[0].start
    assert anchor_of(np.zeros_like(levels)) is None


def test_a_t1_found_one_vertebra_lower_renames_the_column() -> None:
    levels = first_pass_calling_c7_t1()
    probability, m = t1_probability_in_window(levels, box(1))  # the true T1 is the first pass's "T2"
    refined = refine(levels, probability, m)
    assert refined is not None
    new, t1_native = refined
    assert (new[box(1)] == vertebra_label(0)).all()  # T1 where the second pass found it
    assert (new[box(0)] == 0).all()  # C7 is not part of the column
    for i in range(2, 17):  # every vertebra below: renamed one level down (box i is vertebra i-1)
        assert (new[box(i)] == vertebra_label(i - 1)).all(), i
    assert float(t1_native[box(1)].mean()) > 0.9
    labels = spine_labels(new)
    assert (labels[box(1)] == SpineClass.T1).all() and (labels[box(5)] == SpineClass.V).all()


def test_without_a_t1_the_first_pass_stands() -> None:
    levels = first_pass_calling_c7_t1()
    calls = []

    def nothing(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape)
        out = np.zeros((batch.shape[0], 3, *batch.shape[2:]), np.float32)
        out[:, int(SpineClass.F)] = 1.0
        return out

    image = np.random.default_rng(0).random(levels.shape, dtype=np.float32)
    assert second_pass(nothing, [image, image[:, ::-1]], [levels, levels[:, ::-1]]) == [None, None]
    assert calls == [(2, 3, *TOP_INPUT)]  # both windows in one batch
    tiny, m = t1_probability_in_window(levels, (slice(box(1)[0].start, box(1)[0].start + 5), slice(LEFT, LEFT + 5)))
    assert MIN_T1_PIXELS > 25 and refine(levels, tiny, m) is None  # a speck is no T1
    assert second_pass(nothing, [image], [np.zeros_like(levels)]) == [None]  # nothing to centre a window on


def test_mapping_back_over_the_window_matches_the_whole_image() -> None:
    levels = first_pass_calling_c7_t1()
    probability, m = t1_probability_in_window(levels, box(1))
    probability = cv2.GaussianBlur(probability, (0, 0), 3.0)  # soft edges, as a model gives
    refined = refine(levels, probability, m)
    assert refined is not None
    rows, cols = levels.shape
    whole = cv2.warpAffine(probability, cv2.invertAffineTransform(m), (cols, rows), flags=cv2.INTER_LINEAR)
    assert np.abs(refined[1] - whole).max() < 0.02  # the same up to fixed-point interpolation
    assert np.count_nonzero((refined[1] > 0.5) != (whole > 0.5)) <= 0.01 * np.count_nonzero(whole > 0.5)


def testlevel_rows_counts_as_bincount_does() -> None:
    rng = np.random.default_rng(3)
    levels = rng.integers(0, DISC_LABEL + 1, (700, 90), dtype=np.uint8)
    keep = rng.random(levels.shape) > 0.3
    counts, row_sums = level_rows(levels, keep)
    kept = np.where(keep, levels, 0).ravel()
    rows = np.repeat(np.arange(levels.shape[0], dtype=np.float64), levels.shape[1])
    want_counts = np.bincount(kept, minlength=DISC_LABEL + 1)
    want_sums = np.bincount(kept, weights=rows, minlength=DISC_LABEL + 1)
    assert (counts[1:] == want_counts[1:]).all() and (row_sums[1:] == want_sums[1:]).all()


def test_the_mirror_average_keeps_only_what_the_window_and_its_mirror_agree_on() -> None:
    """A fake second pass with a bias to one side: T1 is the window's bright pixels (the true T1, box 0, where
    the window is centred) and, wherever it looks, a band just right of the centre. Alone, the window calls
    the box and the band T1; averaged with its mirror image (whose band lands left of the box when flipped
    back), the bands drop to 0.5 and T1 is the box. The mirror image's own window is not averaged."""
    levels = first_pass_calling_c7_t1()
    image = np.zeros(levels.shape, np.float32)
    image[box(0)] = 1.0
    h, w = TOP_INPUT
    band = slice(w // 2 + 32, w // 2 + 52)  # the box spans about +-32 window columns around the centre
    shapes = []

    def biased(batch: np.ndarray) -> np.ndarray:
        shapes.append(batch.shape)
        t1 = batch[:, 0].copy()
        t1[:, h // 2 - 10 : h // 2 + 10, band] = 1.0
        out = np.zeros((batch.shape[0], 3, h, w), np.float32)
        out[:, int(SpineClass.T1)], out[:, int(SpineClass.F)] = t1, 1.0 - t1
        return out

    def t1_columns(result: tuple[np.ndarray, np.ndarray] | None) -> int:
        assert result is not None
        return int(np.count_nonzero((result[0] == vertebra_label(0)).any(axis=0)))

    [alone] = second_pass(biased, [image], [levels])
    assert t1_columns(alone) >= WIDTH + 15  # the band taken for T1 too
    averaged, mirror = second_pass(biased, [image, image[:, ::-1]], [levels, levels[:, ::-1]], True)
    assert shapes[-1][0] == 3  # image, mirror image and the image's window mirrored, in one batch
    assert abs(t1_columns(averaged) - WIDTH) <= 2  # the box only
    assert t1_columns(mirror) >= WIDTH + 15  # the mirror image's own window keeps its own

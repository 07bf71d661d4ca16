"""Level layout, quality flag, measurements from level labels, and training augmentation."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from inference.analysis.cobb import endplate_tilt_deg
from inference.analysis.levels import LEVEL_CLASS_ORDER, NUM_LEVEL_CLASSES, group_probabilities, native_levels
from inference.analysis.measure import (
    T1_EDGE_WEIGHT,
    axis_corners,
    centreline_tilts,
    measure,
    reportable,
    t1_tilt_deg,
    upper_edge_tilt_deg,
)
from inference.data.augment import Stored, augment
from inference.data.spineweb import SpineWeb, level_mask
from inference.prediction import SPINE, class_stats
from inference.quality import QualityFigures, QualityThresholds, assess, judge
from tests.inference.test_spineweb import DATA


@pytest.fixture(scope="module")
def record_and_levels() -> tuple:
    if not (DATA / "labels" / "landmarks.csv").is_file():
        pytest.skip("shared SpineWeb data not present")
    data = SpineWeb(DATA)
    r = next(r for r in data.records if not r.repairs)
    return data, r, level_mask(r.corners, r.size)


def test_group_probabilities() -> None:
    rng = np.random.default_rng(0)
    z = rng.random((2, NUM_LEVEL_CLASSES, 8, 4)).astype(np.float32)
    z /= z.sum(axis=1, keepdims=True)
    g = group_probabilities(z, LEVEL_CLASS_ORDER)
    assert g.shape == (2, 3, 8, 4)
    np.testing.assert_allclose(g.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(g[:, 2], z[:, 1])  # T1 is the T1 class
    with pytest.raises(ValueError, match="unknown class order"):
        group_probabilities(z, ["a", "b"])


def test_native_levels_agree_with_labels() -> None:
    probs = np.zeros((NUM_LEVEL_CLASSES, 4, 2), np.float32)
    probs[1, :2], probs[5, 2:] = 1.0, 1.0
    labels = np.zeros((8, 4), np.uint8)
    labels[:2], labels[2:6] = 2, 1  # T1 on top, then V
    levels = native_levels(probs, labels)
    assert (levels[:2] == 1).all() and (levels[6:] == 0).all()
    assert set(np.unique(levels[2:6]).tolist()) <= {2, 5}  # V pixels are never T1


def test_measurements_from_true_levels_match_the_dataset(record_and_levels: tuple) -> None:
    _, r, levels = record_and_levels
    m = measure(levels)
    assert [v.name for v in m.vertebrae] == list(LEVEL_CLASS_ORDER[1:-1])
    truth = [float(v) for v in list(csv.reader((DATA / "labels" / "angles.csv").open()))[r.index]]
    assert len(m.cobb) == 3
    # tilts from the column's centre line (on the true masks of the validation split: main-curve MAE 5.3 deg)
    assert abs(m.cobb[0].angle_deg - truth[0]) < 8.0
    assert m.t1_tilt_deg == pytest.approx(endplate_tilt_deg(r.corners[0]), abs=6.0)  # half of it the centre line
    missing = levels.copy()
    missing[missing == 9] = 0  # T9 gone: no Cobb angles, and the reason says so
    m2 = measure(missing)
    assert m2.cobb == [] and "T9" in m2.notes[0]


def test_quality_flag() -> None:
    t = QualityThresholds()
    good = QualityFigures(column_percent=8.0, largest_share=0.99, t1_share=0.04, flip_dice=0.95)
    assert judge(good, t).reliable
    specks = QualityFigures(column_percent=0.1, largest_share=0.2, t1_share=0.0, flip_dice=0.02)
    q = judge(specks, t)
    assert not q.reliable and "too small" in q.statement and "flip Dice" in q.statement
    no_t1 = QualityFigures(column_percent=8.0, largest_share=0.99, t1_share=0.0, flip_dice=0.95)
    assert judge(no_t1, t).reasons == ["T1 not found"]
    t1_elsewhere = QualityFigures(8.0, 0.99, 0.04, flip_dice=0.95, t1_flip_dice=0.1)  # the mirror's T1: another level
    assert not judge(t1_elsewhere, t).reliable and "T1 level uncertain" in judge(t1_elsewhere, t).statement
    assert judge(QualityFigures(8.0, 0.99, 0.04, 0.95, t1_flip_dice=None), t).reliable  # no mirror run: no check
    labels = np.zeros((100, 50), np.uint8)
    labels[::10, ::10] = 1  # scattered specks
    classes = class_stats(labels, np.ones_like(labels, np.float32), None, labels)
    assert classes[SPINE].pixels == 50
    assert not assess(labels, classes, t).reliable


def test_augment_views(record_and_levels: tuple) -> None:
    data, r, levels = record_and_levels
    image = data.image(r)
    stored = Stored((image[::4, ::4] * 255).astype(np.uint8), levels[::4, ::4])
    rng = np.random.default_rng(3)
    views = [augment(rng, stored, (96, 32)) for _ in range(30)]
    for x, y in views:
        assert x.shape == y.shape == (96, 32) and x.dtype == np.float32 and y.dtype == np.uint8
        assert x.min() >= 0.0 and x.max() <= 1.0 and y.max() < NUM_LEVEL_CLASSES
    assert sum(int((y > 0).any()) for _, y in views) >= 25  # the spine stays in view in almost every one
    again = augment(np.random.default_rng(3), stored, (96, 32))
    np.testing.assert_array_equal(again[1], views[0][1])  # seeded: reproducible


def test_measurements_reported_only_as_far_as_the_model_is_validated(record_and_levels: tuple) -> None:
    _, _, levels = record_and_levels
    m = measure(levels)
    good = {"validation": {"measurements": {"cobb": {"smape_percent": 9.0}, "t1_tilt": {"mae_deg": 2.5}}}}
    assert reportable(m, good).cobb == m.cobb and reportable(m, good).t1_tilt_deg == m.t1_tilt_deg
    poor = {"validation": {"measurements": {"cobb": {"smape_percent": 43.5}, "t1_tilt": {"mae_deg": 11.2}}}}
    withheld = reportable(m, poor)
    assert withheld.cobb == [] and withheld.t1_tilt_deg is None
    assert any("Cobb angles withheld: validation Cobb SMAPE 43.5 %" in n for n in withheld.notes)
    assert any("T1 tilt withheld" in n for n in withheld.notes)
    assert withheld.vertebrae == m.vertebrae  # the levels stay located
    unknown = reportable(m, {})
    assert unknown.cobb == [] and any("no validation figure recorded" in n for n in unknown.notes)


def test_centre_line_tilts_are_perpendicular_to_the_column() -> None:
    levels = np.zeros((400, 300), np.uint8)
    angle = np.radians(10.0)  # the column leans: x grows by tan(10 deg) per row
    for y in range(40, 360):
        x = int(100 + (y - 40) * np.tan(angle))
        levels[y, x : x + 40] = 5
    centres = np.array([[120.0 + (y - 40) * np.tan(angle), float(y)] for y in (100, 200, 300)])
    tilts = centreline_tilts(levels, centres)
    np.testing.assert_allclose(tilts, -angle, atol=np.radians(0.5))  # endplates rise to the right by 10 deg
    quads = np.array([[[0, 0], [40, 0], [0, 20], [40, 20]]] * 3, np.float64) + centres[:, None] - [20, 10]
    rebuilt = axis_corners(quads, tilts)
    np.testing.assert_allclose(rebuilt.mean(axis=1), centres)  # same centre, endplates turned
    direction = rebuilt[:, 1] - rebuilt[:, 0]
    np.testing.assert_allclose(np.arctan2(direction[:, 1], direction[:, 0]), tilts, atol=1e-9)


@pytest.mark.parametrize("angle_deg", [-12.0, 0.0, 7.5])
def test_t1_tilt_follows_its_upper_edge(angle_deg: float) -> None:
    """A T1 drawn as a rotated box (rising to the right for positive angles, as the SR states): the line
    fitted to its upper edge gives the angle; the centre line only nudges it by its weight."""
    piece = np.zeros((200, 260), np.uint8)
    box = cv2.boxPoints(((130.0, 100.0), (120.0, 70.0), -angle_deg)).astype(np.int32)  # cv2: y down
    cv2.fillPoly(piece, [box], 1)
    edge = upper_edge_tilt_deg(piece)
    assert edge is not None and edge == pytest.approx(angle_deg, abs=1.0)
    assert t1_tilt_deg(piece, 0.0) == pytest.approx(T1_EDGE_WEIGHT * edge, abs=1e-9)
    assert upper_edge_tilt_deg(np.zeros_like(piece)) is None
    assert t1_tilt_deg(np.zeros_like(piece), 3.0) == 3.0  # no edge to fit: the centre line's

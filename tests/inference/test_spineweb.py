"""The SpineWeb dataset 16 reader on the real shared data: repairs, exclusions, masks, the fixed split."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from inference.analysis.levels import DISC_LABEL, LEVEL_TO_SPINE, to_spine_labels, vertebra_label
from inference.data.spineweb import (
    VALIDATION_IMAGES,
    SpineWeb,
    SpineWebError,
    level_mask,
    reorder_crossed,
    self_intersecting,
)
from tests.conftest import SHARED

DATA = SHARED / "data" / "spineweb16"


@pytest.fixture(scope="module")
def data() -> SpineWeb:
    if not (DATA / "labels" / "landmarks.csv").is_file():
        pytest.skip("shared SpineWeb data not present")
    return SpineWeb(DATA)


def test_counts_repairs_and_exclusions(data: SpineWeb) -> None:
    summary = data.summary()
    assert summary["images"] == 481
    # two vertebrae on top of each other: 6 files at <= 0.08 of the neighbouring gaps, 2 at 0.30
    assert len(data.exclusions) == 8 and summary["used"] == 473
    assert all("on top of each other" in e.reason for e in data.exclusions)
    crossed = [r for r in data.records if any("self-crossing" in n for n in r.repairs)]
    assert len(crossed) == 2  # the README's "a handful (2 in this split)"
    for r in data.records:
        assert not any(self_intersecting(c) for c in r.corners)
        centres = r.corners.mean(axis=1)
        assert (np.diff(centres[:, 1]) >= 0).all()  # sorted by mean y


def test_reorder_crossed_takes_long_edges_as_endplates() -> None:
    tl, tr, bl, br = np.array([0.0, 0.0]), np.array([10.0, 0.0]), np.array([0.0, 4.0]), np.array([10.0, 4.0])
    crossed = np.stack([tl, tr, br, bl])  # BL and BR swapped: TL-TR-BR-BL crosses itself
    assert self_intersecting(crossed)
    fixed = reorder_crossed(crossed)
    np.testing.assert_allclose(fixed, np.stack([tl, tr, bl, br]))


def test_masks_are_one_continuous_column(data: SpineWeb) -> None:
    for r in data.records[::8]:
        scale = 0.25
        size = (int(r.size[0] * scale), int(r.size[1] * scale))
        levels = level_mask(r.corners, size, (scale, scale))
        present = set(np.unique(levels).tolist())
        assert {vertebra_label(k) for k in range(17)} <= present and DISC_LABEL in present
        spine = to_spine_labels(levels)
        count, _ = cv2.connectedComponents((spine > 0).astype(np.uint8), connectivity=8)
        assert count == 2, r.name  # background + one column
        t1 = spine == 2
        ys = np.nonzero(t1)[0]
        assert ys.max() < np.nonzero(spine == 1)[0].max()  # T1 on top of V


def test_split_is_fixed_by_patient_and_large_enough(data: SpineWeb) -> None:
    train, val = data.split()
    assert len(val) >= 80 and abs(len(val) - VALIDATION_IMAGES) <= 2
    assert not set(train) & set(val) and len(train) + len(val) == len(data.records)
    assert {data.records[i].patient for i in train}.isdisjoint({data.records[i].patient for i in val})
    assert (train, val) == SpineWeb(DATA).split()  # same seed, same split


def test_malformed_row_is_a_clear_error(tmp_path: Path) -> None:
    if not DATA.is_dir():
        pytest.skip("shared SpineWeb data not present")
    root = tmp_path / "sw"
    (root / "labels").mkdir(parents=True)
    (root / "images").mkdir()
    name = (DATA / "labels" / "filenames.csv").read_text().splitlines()[0]
    shutil.copy(DATA / "images" / name, root / "images" / name)
    (root / "labels" / "filenames.csv").write_text(name + "\n")
    (root / "labels" / "angles.csv").write_text("1,2,3\n")
    (root / "labels" / "landmarks.csv").write_text(",".join(["0.5"] * 100) + "\n")
    with pytest.raises(SpineWebError, match="expected 136 landmark values"):
        SpineWeb(root)
    (root / "labels" / "landmarks.csv").write_text(",".join(["x"] * 136) + "\n")
    with pytest.raises(SpineWebError, match="not all numbers"):
        SpineWeb(root)
    with pytest.raises(SpineWebError, match="not a SpineWeb"):
        SpineWeb(tmp_path / "missing")


def test_level_layout_groups_to_v_and_t1() -> None:
    assert LEVEL_TO_SPINE[0] == 0 and LEVEL_TO_SPINE[1] == 2
    assert (LEVEL_TO_SPINE[2:] == 1).all()

"""Cobb angles and T1 tilt in the TID 1500 SR, from the true vertebra levels of a real radiograph (SpineWeb
validation image in a DX header): one group per angle and one for T1 tilt, with standard codes where they
exist, end vertebrae as finding sites, endplate lines on the source image; valid for dciodvfy and
PixelMed; none for an unreliable prediction, and the reason when a vertebra is missing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_node.writers import build_outputs
from dicom_node.writers.spine_sr import COBB_ANGLE, T1_TILT, vertebra_code
from inference.analysis.levels import vertebra_label
from inference.prediction import Quality
from tests.dciodvfy import dciodvfy_errors
from tests.dicom_node.outputs import make_card, prediction_of
from tests.pixelmed import pixelmed_errors, sr_errors
from tests.radiographs import SHARED_DATA, Radiograph, validation_radiographs

pytestmark = [pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data/spineweb16"), pytest.mark.slow]


@pytest.fixture(scope="module")
def radiograph() -> Radiograph:
    return validation_radiographs(1)[0]


def groups_of(sr: Dataset) -> list[Dataset]:
    [imaging] = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010"]
    return list(imaging.ContentSequence)


def num_of(group: Dataset) -> Dataset:
    return next(i for i in group.ContentSequence if i.ValueType == "NUM")


def test_cobb_and_t1_tilt_groups(radiograph: Radiograph, tmp_path: Path) -> None:
    prediction = prediction_of(radiograph, radiograph.levels)
    m = prediction.measurements
    assert m is not None and len(m.cobb) == 3 and m.t1_tilt_deg is not None
    card = make_card(demo=False)
    sr = build_outputs(radiograph.dataset, prediction, card).sr
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    assert sr_errors(path) == []
    groups = groups_of(dcmread(path))
    spine = groups[2:]  # after the two segment groups
    # this image's main curve runs T1-L5: both secondary angles are the challenge's "no curve" (0 deg,
    # T1-T1 and L5-L5). Its two endplates would be one vertebra's: no group, the report says it in words
    assert [(c.upper, c.lower, c.is_curve) for c in m.cobb] == [
        ("T1", "L5", True),
        ("T1", "T1", False),
        ("L5", "L5", False),
    ]
    assert len(spine) == 2
    curve = m.cobb[0]
    num = num_of(spine[0])
    assert num.ConceptNameCodeSequence[0].CodeValue == COBB_ANGLE.value  # SCT 285285000
    assert num.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "deg"
    assert float(num.MeasuredValueSequence[0].NumericValue) == pytest.approx(curve.angle_deg, abs=0.01)
    sites = [i.ConceptCodeSequence[0].CodeValue for i in num.ContentSequence if i.ValueType == "CODE"]
    assert sites == [vertebra_code(curve.upper).value, vertebra_code(curve.lower).value]
    lines = [i for i in num.ContentSequence if i.ValueType == "SCOORD"]
    assert [i.GraphicType for i in lines] == ["POLYLINE", "POLYLINE"]
    drawn = [np.asarray(i.GraphicData, np.float64).reshape(-1, 2) - 0.5 for i in lines]
    assert np.allclose(drawn[0], curve.upper_endplate, atol=1e-3)
    assert np.allclose(drawn[1], curve.lower_endplate, atol=1e-3)
    [image] = lines[0].ContentSequence
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == radiograph.dataset.SOPInstanceUID
    texts = [i.TextValue for i in dcmread(path).ContentSequence[-1].ContentSequence if i.ValueType == "TEXT"]
    assert [t for t in texts if "no curve" in t] == [
        "Cobb angle 2 (secondary 1): no curve (0 deg, both end vertebrae T1: no vertebra beyond it is measured)",
        "Cobb angle 3 (secondary 2): no curve (0 deg, both end vertebrae L5: no vertebra beyond it is measured)",
    ]
    tilt = num_of(spine[1])
    assert tilt.ConceptNameCodeSequence[0].CodeValue == T1_TILT.value
    assert float(tilt.MeasuredValueSequence[0].NumericValue) == pytest.approx(m.t1_tilt_deg, abs=0.01)
    read = hd.sr.srread(path)  # highdicom reads the groups back
    assert len(read.content.get_planar_roi_measurement_groups()) == 2


def test_missing_vertebra_gives_no_cobb_group_and_says_why(radiograph: Radiograph) -> None:
    levels = radiograph.levels.copy()
    levels[levels == vertebra_label(5)] = 0  # T6 not found
    prediction = prediction_of(radiograph, levels)
    sr = build_outputs(radiograph.dataset, prediction, make_card(demo=False)).sr
    names = [num_of(g).ConceptNameCodeSequence[0].CodeValue for g in groups_of(sr)[2:]]
    assert names == [T1_TILT.value]
    texts = [i.TextValue for i in sr.ContentSequence[-1].ContentSequence if i.ValueType == "TEXT"]
    assert any("Cobb angles not measured" in t and "T6" in t for t in texts)


def test_unreliable_prediction_has_no_measurements(radiograph: Radiograph) -> None:
    prediction = replace(prediction_of(radiograph, radiograph.levels), quality=Quality(False, ["T1 not found"]))
    sr = build_outputs(radiograph.dataset, prediction, make_card(demo=False)).sr
    [group] = groups_of(sr)  # the analysed image, so that OHIF can open the report
    assert not [i for i in group.ContentSequence if i.ValueType == "NUM"]
    finding = next(i for i in group.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121071")
    assert finding.ConceptCodeSequence[0].CodeMeaning == "No reliable segmentation"
    [region] = [i for i in group.ContentSequence if i.ValueType == "SCOORD"]
    rows, cols = int(radiograph.dataset.Rows), int(radiograph.dataset.Columns)
    assert np.allclose(np.asarray(region.GraphicData).reshape(-1, 2).max(axis=0), [cols, rows])
    texts = [i.TextValue for i in sr.ContentSequence[-1].ContentSequence if i.ValueType == "TEXT"]
    assert any("T1 not found" in t for t in texts)


def test_seg_has_a_segment_per_vertebra_found(radiograph: Radiograph, tmp_path: Path) -> None:
    levels = radiograph.levels.copy()
    levels[levels == vertebra_label(8)] = 0  # T9 not found: no T9 segment, the others renumbered
    prediction = prediction_of(radiograph, levels)
    card = make_card(demo=False)
    seg = build_outputs(radiograph.dataset, prediction, card).seg
    assert seg is not None
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    assert pixelmed_errors(path) == []
    written = dcmread(path)
    names = [f"T{i}" for i in range(1, 13) if i != 9] + [f"L{i}" for i in range(1, 6)]
    assert [s.SegmentLabel for s in written.SegmentSequence] == ["Spine", "T1 vertebra", *names]
    assert [int(s.SegmentNumber) for s in written.SegmentSequence] == list(range(1, 3 + len(names)))
    for item, name in zip(written.SegmentSequence[2:], names, strict=True):
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == vertebra_code(name).value
    frames = written.pixel_array.reshape(len(written.SegmentSequence), *levels.shape)
    l4 = names.index("L4") + 2
    assert np.array_equal(frames[l4].astype(bool), levels == vertebra_label(15))  # L4 is vertebra 16
    plain = build_outputs(radiograph.dataset, prediction, card, vertebra_segments=False).seg
    assert plain is not None and [s.SegmentLabel for s in plain.SegmentSequence] == ["Spine", "T1 vertebra"]


@pytest.mark.parametrize("rows", [None, 1024])  # the native film and a narrow 1024-row copy of it
def test_overlay_legend_hides_no_endplate_line_and_stays_above_the_warning(rows: int | None) -> None:
    from dicom_node.writers.overlay import covered_weight, legend_box, warning_band_top

    [radiograph] = validation_radiographs(1, rows=rows, first=2)  # an S curve: three angles, six endplate lines
    prediction = prediction_of(radiograph, radiograph.levels)
    assert prediction.measurements is not None and len(prediction.measurements.cobb) == 3
    card = make_card(demo=False)
    _, layout, left, top = legend_box(radiograph.truth, prediction, card)
    lines = covered_weight(radiograph.truth, prediction.measurements) > 1  # the endplate lines' pixels
    assert lines.any()
    assert not lines[top : top + layout.height, left : left + layout.width].any()
    assert top + layout.height <= warning_band_top(radiograph.truth.shape)  # above "NOT FOR DIAGNOSTIC USE"
    assert left in (0, radiograph.truth.shape[1] - layout.width)  # against an edge


def test_overlay_draws_no_lines_for_no_curve_and_says_so(radiograph: Radiograph) -> None:
    from dicom_node.writers.overlay import endplate_lines, measurement_lines

    m = prediction_of(radiograph, radiograph.levels).measurements  # main curve T1-L5, then two "no curve"
    assert m is not None and [c.is_curve for c in m.cobb] == [True, False, False]
    assert len(endplate_lines(m)) == 2  # the main curve's: T1's upper and L5's lower endplate
    legend = measurement_lines(m)
    assert legend[0].endswith("deg, T1-L5")
    assert legend[1:3] == ["Cobb 2: 0.0 deg, no curve", "Cobb 3: 0.0 deg, no curve"]

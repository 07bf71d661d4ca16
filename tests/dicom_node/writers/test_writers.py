"""SEG, SR and overlay SC built from a known prediction (the phantom's true mask) on a phantom DX.

Every object is written, read back (pydicom and highdicom) and checked with dciodvfy; the content is
checked against the mask and the figures the prediction carries.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID

from dicom_node.reference.compare import read_segmentation
from dicom_node.writers import Outputs, build_outputs
from dicom_node.writers.overlay import NOT_FOR_DIAGNOSIS
from dicom_node.writers.seg import SEGMENTS, segment_array, segmentation_type, vertebra_segments
from dicom_node.writers.sr import FLIP_DICE, FLIP_JACCARD, PRIVATE_SCHEME
from dicom_node.writers.uids import output_uid
from inference.classes import SpineClass
from inference.data.phantom import Phantom, make_phantom
from inference.data.phantom_dicom import phantom_to_dataset
from inference.model_card import DEMO_DISCLAIMER, ModelCard
from inference.prediction import Prediction
from tests.dciodvfy import dciodvfy_errors
from tests.dicom_node.outputs import OTHER_WEIGHTS, WEIGHTS, fake_prediction, make_card

SEED = 920000
HEIGHT = 520
SEG_CLASS, SR_CLASS, SC_CLASS = (
    "1.2.840.10008.5.1.4.1.1.66.4",
    "1.2.840.10008.5.1.4.1.1.88.34",
    "1.2.840.10008.5.1.4.1.1.7",
)
SPINE_CODE, T1_CODE, ANATOMICAL_STRUCTURE = "421060004", "64864005", "91723000"
AREA_CODE, PROBABILITY_CODE, MEAN_CODE = "42798000", "122157", "373098007"
IMAGE_LIBRARY = "111028"


@dataclass
class Written:
    source: Dataset
    prediction: Prediction
    card: ModelCard
    outputs: Outputs
    paths: dict[str, Path]

    def read(self, kind: str) -> Dataset:
        return dcmread(self.paths[kind])


def build_and_write(
    source: Dataset, prediction: Prediction, card: ModelCard, folder: Path, display_image: np.ndarray | None = None
) -> Written:
    outputs = build_outputs(source, prediction, card, display_image=display_image)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, ds in (("seg", outputs.seg), ("sr", outputs.sr), ("sc", outputs.sc)):
        paths[kind] = folder / f"{kind}.dcm"
        ds.save_as(paths[kind], enforce_file_format=True)
    return Written(source, prediction, card, outputs, paths)


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom(SEED, height=HEIGHT)


@pytest.fixture(scope="module")
def written(phantom: Phantom, tmp_path_factory: pytest.TempPathFactory) -> Written:
    card = make_card()
    source = phantom_to_dataset(phantom)
    prediction = fake_prediction(phantom, card, (phantom.pixel_spacing_mm,) * 2)
    return build_and_write(source, prediction, card, tmp_path_factory.mktemp("outputs"), phantom.display_image())


def content_items(ds: Dataset) -> Iterator[Dataset]:
    """Every SR content item below ``ds``, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def concept(item: Dataset) -> tuple[str, str, str]:
    code = item.ConceptNameCodeSequence[0]
    return code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning


def group_measurements(group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations) -> dict[str, hd.sr.Measurement]:
    return {m.name.meaning: m for m in group.get_measurements()}


# --- all three ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["seg", "sr", "sc"])
def test_outputs_pass_dciodvfy(written: Written, kind: str) -> None:
    assert dciodvfy_errors(written.paths[kind]) == []


def test_outputs_share_the_study_in_new_series(written: Written) -> None:
    src = written.source
    series = set()
    for kind, sop_class in (("seg", SEG_CLASS), ("sr", SR_CLASS), ("sc", SC_CLASS)):
        ds = written.read(kind)
        assert ds.SOPClassUID == sop_class
        assert ds.StudyInstanceUID == src.StudyInstanceUID
        assert (ds.PatientID, ds.PatientName) == (src.PatientID, src.PatientName)
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID
        series.add(ds.SeriesInstanceUID)
        assert "NOT FOR DIAGNOSTIC USE" in ds.SeriesDescription
    assert len(series) == 3


def test_output_uids_are_deterministic(written: Written) -> None:
    again = build_outputs(written.source, written.prediction, written.card)
    other = build_outputs(written.source, written.prediction, make_card(OTHER_WEIGHTS))
    for first, second, third in zip(written.outputs.datasets(), again.datasets(), other.datasets(), strict=True):
        for keyword in ("SOPInstanceUID", "SeriesInstanceUID"):
            uid = str(first[keyword].value)
            assert uid == second[keyword].value
            assert uid != third[keyword].value
            assert UID(uid).is_valid and uid.startswith("2.25.") and len(uid) <= 64
    tracking = [d.TrackingUID for d in written.outputs.seg.SegmentSequence]
    assert tracking == [d.TrackingUID for d in again.seg.SegmentSequence]
    assert set(tracking).isdisjoint(d.TrackingUID for d in other.seg.SegmentSequence)


def test_output_uid_is_a_version_8_uuid() -> None:
    uid = output_uid("1.2.3", "m", WEIGHTS, "seg")
    assert uid == output_uid("1.2.3", "m", WEIGHTS, "seg")
    assert (
        len(
            {
                uid,
                output_uid("1.2.3", "m", WEIGHTS, "sr"),
                output_uid("1.2.4", "m", WEIGHTS, "seg"),
                output_uid("1.2.3", "n", WEIGHTS, "seg"),
                output_uid("1.2.3", "m", OTHER_WEIGHTS, "seg"),
            }
        )
        == 5
    )
    value = uuid.UUID(int=int(uid.removeprefix("2.25.")))
    assert value.version == 8 and value.variant == uuid.RFC_4122


# --- SEG ----------------------------------------------------------------------------------------------


def test_seg_segments_and_algorithm(written: Written) -> None:
    seg = read_segmentation(written.paths["seg"])
    assert seg.SegmentationType == "BINARY"
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Spine", "T1 vertebra"]
    for segment, code in zip(seg.SegmentSequence, (SPINE_CODE, T1_CODE), strict=True):
        assert (
            segment.SegmentedPropertyTypeCodeSequence[0].CodeValue,
            segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator,
        ) == (code, "SCT")
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == ANATOMICAL_STRUCTURE
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("test-model", WEIGHTS[:12])
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"


def test_seg_pixels_reproduce_the_labels(written: Written) -> None:
    seg = read_segmentation(written.paths["seg"])
    src = written.source
    assert (seg.Rows, seg.Columns, seg.NumberOfFrames) == (src.Rows, src.Columns, 2)
    planes = seg.get_pixels_by_source_instance(source_sop_instance_uids=[src.SOPInstanceUID], segment_numbers=[1, 2])[0]
    labels = written.prediction.labels
    assert np.array_equal(planes[..., 0].astype(bool), labels != SpineClass.F)
    assert np.array_equal(planes[..., 1].astype(bool), labels == SpineClass.T1)


def test_seg_references_and_2d_geometry(written: Written) -> None:
    seg, src = written.read("seg"), written.source
    for frame in seg.PerFrameFunctionalGroupsSequence:
        image = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert (image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID) == (src.SOPClassUID, src.SOPInstanceUID)
    [series] = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == src.SeriesInstanceUID
    assert series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert list(seg.PatientOrientation) == list(src.PatientOrientation)
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    # the source's spacing for OHIF's SEG viewport; a radiograph has no slice thickness and none is invented
    [measures] = shared.PixelMeasuresSequence
    assert [float(v) for v in measures.PixelSpacing] == pytest.approx([float(v) for v in src.ImagerPixelSpacing])
    assert "SliceThickness" not in src and "SliceThickness" not in measures
    assert "Laterality" not in seg and seg.BodyPartExamined == src.BodyPartExamined


def test_seg_reads_back_with_highdicom(written: Written) -> None:
    """highdicom's segread refuses Pixel Measures without Slice Thickness, which the standard allows for a
    SEG without a Frame of Reference (CP 1426) and OHIF needs: pinned, so that a fixed highdicom shows up;
    ``read_segmentation`` (how the node reads SEGs) gives highdicom's Segmentation of the same file."""
    with pytest.raises(AttributeError, match="Pixel Measures"):
        hd.seg.segread(written.paths["seg"])
    seg = read_segmentation(written.paths["seg"])
    pixels = seg.get_pixels_by_source_instance([written.source.SOPInstanceUID], combine_segments=False)
    labels = written.prediction.labels
    assert np.array_equal(pixels[0, ..., 0] > 0, np.isin(labels, [SpineClass.V, SpineClass.T1]))
    assert np.array_equal(pixels[0, ..., 1] > 0, labels == SpineClass.T1)


def test_seg_with_slice_thickness_carries_pixel_measures(phantom: Phantom, tmp_path: Path) -> None:
    source = phantom_to_dataset(phantom)
    source.SliceThickness = "1.5"  # a source that has one (a tomosynthesis slice, a CT localiser)
    card = make_card()
    out = build_and_write(source, fake_prediction(phantom, card, (phantom.pixel_spacing_mm,) * 2), card, tmp_path)
    measures = out.read("seg").SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == pytest.approx([float(v) for v in source.ImagerPixelSpacing])
    assert float(measures.SliceThickness) == 1.5
    assert hd.seg.segread(out.paths["seg"]).get_segment_numbers() == [1, 2]
    assert dciodvfy_errors(out.paths["seg"]) == []


@pytest.mark.parametrize(
    ("rows", "cols", "frames", "kind"),
    [
        (409, 136, 2, "BINARY"),  # whole bytes
        (401, 195, 2, "FRACTIONAL"),  # frames not byte-aligned, odd total
        (616, 209, 19, "FRACTIONAL"),  # frames of an odd number of whole bytes, odd total: padded too
        (2501, 846, 2, "BINARY"),  # not byte-aligned, even total with the two fixed segments ...
        (2501, 846, 19, "FRACTIONAL"),  # ... odd with a segment per vertebra: every frame counts
    ],
)
def test_seg_type_counts_every_frame(rows: int, cols: int, frames: int, kind: str) -> None:
    assert segmentation_type(rows, cols, frames).value == kind


@pytest.mark.parametrize(
    ("seed", "height", "kind"), [(940020, 409, "BINARY"), (940016, 401, "FRACTIONAL")], ids=["even", "odd-bytes"]
)
def test_seg_never_needs_a_pad_byte(tmp_path: Path, seed: int, height: int, kind: str) -> None:
    """A BINARY SEG whose packed bits would end in a pad byte is written as a FRACTIONAL occupancy of 0 and
    1 instead (OHIF 3.13 rejects the padded file): the same mask, read back identically."""
    phantom = make_phantom(seed, height=height)
    card = make_card()
    out = build_and_write(
        phantom_to_dataset(phantom), fake_prediction(phantom, card, None), card, tmp_path, phantom.display_image()
    )
    seg = out.read("seg")
    assert seg.SegmentationType == kind
    bits = int(seg.Rows) * int(seg.Columns) * int(seg.NumberOfFrames) * int(seg.BitsAllocated)
    assert bits % 16 == 0  # whole, even bytes: no pad byte for a reader to trip over
    if kind == "FRACTIONAL":
        assert seg.SegmentationFractionalType == "OCCUPANCY"
        assert set(np.unique(seg.pixel_array)) <= {0, int(seg.MaximumFractionalValue)}
    pixels = read_segmentation(out.paths["seg"]).get_pixels_by_source_instance(
        [out.source.SOPInstanceUID], combine_segments=False
    )
    assert np.array_equal(pixels[0, ..., 1] > 0, phantom.mask == SpineClass.T1)
    assert dciodvfy_errors(out.paths["seg"]) == []


# --- SR -----------------------------------------------------------------------------------------------


def test_sr_measurement_groups(written: Written, phantom: Phantom) -> None:
    sr = hd.sr.srread(written.paths["sr"])
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    assert concept(sr)[0] == "126000"
    groups = sr.content.get_planar_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["Spine", "T1 vertebra"]
    seg_tracking = {d.SegmentLabel: d.TrackingUID for d in written.outputs.seg.SegmentSequence}
    pixel_area = phantom.pixel_spacing_mm**2
    counts = {"Spine": int(np.count_nonzero(phantom.mask)), "T1 vertebra": int(np.count_nonzero(phantom.mask == 2))}
    for group in groups:
        assert group.tracking_uid == seg_tracking[group.tracking_identifier]
        region = group.roi  # the segment's outline on the source image (OHIF draws it)
        assert region is not None and region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        points = region.value
        assert np.array_equal(points[0], points[-1])  # closed
        mask = phantom.mask > 0 if group.tracking_identifier == "Spine" else phantom.mask == 2
        rows, cols = np.nonzero(mask)
        assert points[:, 0].min() <= cols.min() + 1 and points[:, 0].max() >= cols.max()
        assert points[:, 1].min() <= rows.min() + 1 and points[:, 1].max() >= rows.max()
        measurements = group_measurements(group)
        area = measurements["Area"]
        assert (area.name.value, area.unit.value) == (AREA_CODE, "mm2")
        assert area.value == pytest.approx(counts[group.tracking_identifier] * pixel_area, rel=1e-9)
        probability = measurements["Probability"]
        assert probability.name.value == PROBABILITY_CODE and probability.derivation.value == MEAN_CODE
        stats = written.prediction.classes[{"Spine": "Spine", "T1 vertebra": "T1"}[group.tracking_identifier]]
        assert probability.value == pytest.approx(stats.mean_confidence)
        assert measurements[FLIP_DICE.meaning].value == pytest.approx(stats.flip_dice)
        assert measurements[FLIP_JACCARD.meaning].value == pytest.approx(stats.flip_jaccard)
        coverage = measurements["Percentage of image pixels in segment"]
        assert coverage.name.scheme_designator == PRIVATE_SCHEME and coverage.unit.value == "%"
        assert coverage.value == pytest.approx(100 * counts[group.tracking_identifier] / phantom.mask.size)
        assert not {"Dice", "IoU", "Jaccard"} & set(measurements)
    t1 = group_measurements(groups[1])
    stats = written.prediction.classes["T1"]
    assert t1[FLIP_DICE.meaning].value == pytest.approx(stats.flip_dice)
    assert t1[FLIP_JACCARD.meaning].value == pytest.approx(stats.flip_jaccard)
    assert t1[FLIP_DICE.meaning].unit.value == "1"


def test_sr_regions_and_evidence(written: Written) -> None:
    sr, src, seg = written.read("sr"), written.source, written.outputs.seg
    assert seg is not None
    regions = [i for i in content_items(sr) if i.ValueType == "SCOORD"]
    assert len(regions) == 2  # one per segment, each on the source image
    for region in regions:
        [image] = region.ContentSequence
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    images = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in content_items(sr) if i.ValueType == "IMAGE"}
    assert src.SOPInstanceUID in images
    assert any(concept(i)[0] == IMAGE_LIBRARY for i in content_items(sr))
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence == {src.SOPInstanceUID, seg.SOPInstanceUID}
    # the SR is built beside the SEG from its UIDs: the evidence names the SEG's series and class exactly
    [study] = sr.CurrentRequestedProcedureEvidenceSequence
    assert study.StudyInstanceUID == seg.StudyInstanceUID
    [seg_series] = [s for s in study.ReferencedSeriesSequence if s.SeriesInstanceUID == seg.SeriesInstanceUID]
    assert [i.ReferencedSOPClassUID for i in seg_series.ReferencedSOPSequence] == [seg.SOPClassUID]
    assert "PertinentOtherEvidenceSequence" not in sr
    assert PRIVATE_SCHEME in {i.CodingSchemeDesignator for i in sr.CodingSchemeIdentificationSequence}


def test_sr_names_the_algorithm_and_the_demo_disclaimer(written: Written) -> None:
    items = list(content_items(written.read("sr")))
    texts = {(concept(i)[2], i.TextValue) for i in items if i.ValueType == "TEXT"}
    assert ("Algorithm Name", "test-model") in texts and ("Algorithm Version", WEIGHTS[:12]) in texts
    disclaimers = [value for name, value in texts if name == "Comment"]
    assert disclaimers == [DEMO_DISCLAIMER]
    assert "NOT FOR DIAGNOSTIC USE" in DEMO_DISCLAIMER and "synthetic" in DEMO_DISCLAIMER
    names = {concept(i)[2] for i in items if i.ValueType == "NUM"}
    assert {"Dice agreement with flipped-input prediction", "Jaccard agreement with flipped-input prediction"} <= names


# --- SC -----------------------------------------------------------------------------------------------


def test_sc_overlay(written: Written, phantom: Phantom) -> None:
    sc, src = written.read("sc"), written.source
    assert (sc.PhotometricInterpretation, sc.SamplesPerPixel, sc.BitsAllocated) == ("RGB", 3, 8)
    assert (sc.Rows, sc.Columns) == (src.Rows, src.Columns)
    assert sc.BurnedInAnnotation == "YES"
    assert sc.BodyPartExamined == src.BodyPartExamined
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert "test-model" in sc.DerivationDescription and NOT_FOR_DIAGNOSIS in sc.DerivationDescription
    rgb = sc.pixel_array.astype(np.int32)
    body = np.zeros(phantom.mask.shape, bool)
    body[src.Rows // 4 : src.Rows * 3 // 4] = True  # away from the legend and the warning band
    v = (phantom.mask == SpineClass.V) & body
    red, green = rgb[..., 0], rgb[..., 1]
    assert (green[v] > red[v]).mean() > 0.9
    t1 = phantom.mask == SpineClass.T1
    assert red[t1].mean() > green[t1].mean()
    grey = np.repeat(phantom.display_image()[..., None], 3, axis=2).astype(np.int32)
    outside = (phantom.mask == SpineClass.F) & body
    assert np.mean(np.all(rgb[outside] == grey[outside], axis=1)) > 0.9


def test_sc_from_dataset_when_no_display_image(written: Written, phantom: Phantom) -> None:
    if phantom.photometric != "MONOCHROME2":
        pytest.skip("needs a MONOCHROME2 phantom")
    sc = build_outputs(written.source, written.prediction, written.card).sc
    plain = written.outputs.sc
    assert np.array_equal(sc.pixel_array, plain.pixel_array)


# --- other spacings -----------------------------------------------------------------------------------


def test_source_with_pixel_spacing_only(phantom: Phantom, tmp_path: Path) -> None:
    source = phantom_to_dataset(phantom)
    source.PixelSpacing = source.ImagerPixelSpacing
    del source.ImagerPixelSpacing
    card = make_card()
    out = build_and_write(source, fake_prediction(phantom, card, (phantom.pixel_spacing_mm,) * 2), card, tmp_path)
    for path in out.paths.values():
        assert dciodvfy_errors(path) == [], path.name
    shared = out.read("seg").SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == pytest.approx(
        [phantom.pixel_spacing_mm] * 2
    )
    sr = hd.sr.srread(out.paths["sr"])
    # highdicom describes a DX in the Image Library only with Imager Pixel Spacing: the library is left out
    assert not any(concept(i)[0] == IMAGE_LIBRARY for i in content_items(sr))
    groups = sr.content.get_planar_roi_measurement_groups()
    area = group_measurements(groups[1])["Area"]
    assert area.unit.value == "mm2"
    assert area.value == pytest.approx(np.count_nonzero(phantom.mask == 2) * phantom.pixel_spacing_mm**2)


def test_source_without_spacing_reports_pixels(phantom: Phantom, tmp_path: Path) -> None:
    source = phantom_to_dataset(phantom)
    del source.ImagerPixelSpacing
    card = make_card(demo=False)
    out = build_and_write(source, fake_prediction(phantom, card, None), card, tmp_path)
    for path in out.paths.values():
        assert dciodvfy_errors(path) == [], path.name
    [measures] = out.read("seg").SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
    assert "PixelSpacing" not in measures and "SliceThickness" not in measures  # an empty item, for OHIF
    groups = hd.sr.srread(out.paths["sr"]).content.get_planar_roi_measurement_groups()
    expected = {"Spine": np.count_nonzero(phantom.mask), "T1 vertebra": np.count_nonzero(phantom.mask == 2)}
    for group in groups:
        area = group_measurements(group)["Area"]
        assert area.unit.value == "{pixels}"
        assert area.value == expected[group.tracking_identifier]
    sr = out.read("sr")
    # a model trained on real radiographs is still research-only: its outputs carry its own disclaimer
    comments = [i.TextValue for i in content_items(sr) if i.ValueType == "TEXT" and concept(i)[2] == "Comment"]
    assert comments and all(c == card.disclaimer and "NOT FOR DIAGNOSTIC USE" in c for c in comments)
    assert "Research model" in card.disclaimer and "(DEMO" not in sr.SeriesDescription


# --- IHE AI Results provenance ------------------------------------------------------------------------


def test_every_output_names_the_algorithm_as_contributing_equipment(phantom: Phantom) -> None:
    card, other = make_card(), make_card(weights=OTHER_WEIGHTS)
    source = phantom_to_dataset(phantom)
    prediction = fake_prediction(phantom, card, None)
    started = datetime(2026, 3, 4, 5, 6, 7, 890000)
    outputs = build_outputs(source, prediction, card, display_image=phantom.display_image(), started=started)
    again = build_outputs(source, prediction, other, display_image=phantom.display_image(), started=started)
    for ds, retrained in zip(outputs.datasets(), again.datasets(), strict=True):
        [item] = ds.ContributingEquipmentSequence
        assert item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"  # Processing Equipment
        assert item.Manufacturer == "SpineNode" and item.ManufacturerModelName == card.display_name
        assert f"{card.name} {card.version}" in list(item.SoftwareVersions)
        assert UID(item.DeviceUID).is_valid
        assert item.DeviceUID != retrained.ContributingEquipmentSequence[0].DeviceUID  # other weights
        assert (ds.ContentDate, ds.ContentTime) == ("20260304", "050607.890000")  # when the analysis started
    assert outputs.sr.VerificationFlag == "UNVERIFIED"


def test_segment_planes_equal_the_labels_everywhere() -> None:
    """The planes are filled only in the foreground's bounding box: outside it they must still be empty,
    inside it equal to the label image, for the fixed segments and the vertebra levels alike."""
    rng = np.random.default_rng(5)
    labels = np.zeros((300, 120), np.uint8)
    levels = np.zeros_like(labels)
    labels[40:260, 30:70] = rng.integers(0, 3, (220, 40))
    levels[labels > 0] = rng.integers(1, 19, int(np.count_nonzero(labels)))
    vertebrae = vertebra_segments(levels)
    planes = segment_array(labels, levels, vertebrae)[0]
    assert planes.shape == (*labels.shape, len(SEGMENTS) + len(vertebrae))
    for index, spec in enumerate(SEGMENTS):
        assert (planes[..., index] == spec.mask(labels)).all()
    for index, v in enumerate(vertebrae, start=len(SEGMENTS)):
        assert (planes[..., index] == (levels == v.label)).all()
    assert not segment_array(np.zeros_like(labels))[0].any()

"""The TID 1500 Measurement Report of one prediction, as a Comprehensive 3D SR.

One measurement group per non-empty SEG segment: TID 1410 "Planar ROI Measurements and Qualitative
Evaluations" whose Image Region is a closed SCOORD POLYLINE on the source image - the segment's outline,
or the convex hull of its pixels when it has several pieces (``dicom_node.writers.regions``). The
group carries the segment's Tracking Identifier and Tracking UID (the same as the SEG segment's: that is
how a reader ties the group to the segment), the finding type, the algorithm (TID 4019: model name,
weights version, AI family) and these measurements of the whole segment:

* area, SCT 42798000, in mm2 (or in ``{pixels}`` when the image has no usable pixel spacing);
* mean probability: DCM 122157 "Probability" with derivation SCT 373098007 "Mean" (the mean of the
  per-pixel maximum softmax over the segment);
* coverage: the percentage of image pixels in the segment (private code, scheme 99SPINESEG);
* flip agreement: Dice and Jaccard between the prediction and the prediction of the horizontally
  flipped image (private codes whose meanings say exactly that; a stability signal, not an accuracy).

Why planar groups rather than TID 1411 groups that reference the SEG segment: OHIF (3.13) hydrates only
groups with an image SCOORD and crashes on any group without one ("reading 'ReferencedSOPSequence'");
an image region is equally valid TID 1500 content (PS3.16 TID 1500 row 7, TID 1410 row 7).

Free text goes into the report's "Qualitative Evaluations" container (TID 1500 rows 12-13): the demo
disclaimer ("Comment") and, when the prediction's quality flag says it is not reliable, the statement
that no reliable segmentation was obtained and why ("Finding") - such a report has one group only, the
analysed image with no measurement (``analysed_image_group``). The
document evidence lists the source image and the SEG (when one was written); the source is also in the
Image Library when highdicom can describe it.

``segment_group`` and ``comprehensive_sr`` are shared with the evaluation SR
(``dicom_node.writers.evaluation_sr``), which carries true Dice/Jaccard against a reference SEG.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_node.writers.private_codes import PRIVATE_SCHEME, PRIVATE_SCHEME_NAME, PRIVATE_SCHEME_ORGANIZATION
from dicom_node.writers.provenance import algorithm_id
from dicom_node.writers.regions import SegmentRegion, image_region, segment_region
from dicom_node.writers.seg import SEGMENTS, SegmentSpec
from dicom_node.writers.spine_sr import spine_groups
from dicom_node.writers.uids import device_uid, tracking_uid
from inference.model_card import ModelCard
from inference.prediction import SPINE, ClassStats, Prediction

log = logging.getLogger(__name__)

COVERAGE = Code("SPN-COVERAGE", PRIVATE_SCHEME, "Percentage of image pixels in segment")
FLIP_DICE = Code("SPN-FLIP-DICE", PRIVATE_SCHEME, "Dice agreement with flipped-input prediction")
NO_RELIABLE_SEGMENTATION = Code("SPN-NO-RELIABLE-SEG", PRIVATE_SCHEME, "No reliable segmentation")
FLIP_JACCARD = Code("SPN-FLIP-JACCARD", PRIVATE_SCHEME, "Jaccard agreement with flipped-input prediction")
AREA = codes.SCT.Area
PROBABILITY = codes.DCM.Probability
MEAN = codes.SCT.Mean
COMMENT = codes.DCM.Comment
UNIT_MM2 = codes.UCUM.SquareMillimeter
UNIT_PIXELS = Code("{pixels}", "UCUM", "Pixels")
UNIT_PERCENT = codes.UCUM.Percent
UNIT_RATIO = codes.UCUM.NoUnits
FINDING = codes.DCM.Finding
IMAGING_MEASUREMENTS = codes.DCM.ImagingMeasurements  # TID 1500 row 6
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")  # TID 1500 row 12
# CID 100 "Imaging procedure" (SCT 363679005): the X-ray entry of CID 100 (LN 43468-8) is newer than the
# CID 100 that PixelMed's validator (2022) checks against, which reports it as an error; the procedure's
# modality is in the evidence (the source image) anyway.
PROCEDURE_REPORTED = codes.cid100.ImagingProcedure
INSTANCE_NUMBER = 1
# What highdicom raises when a source lacks an attribute its Image Library descriptors need.
LIBRARY_ERRORS = (AttributeError, KeyError, IndexError, TypeError, ValueError)


def coding_scheme() -> CodingSchemeIdentificationItem:
    """The Coding Scheme Identification item that declares the private scheme."""
    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME, name=PRIVATE_SCHEME_NAME, responsible_organization=PRIVATE_SCHEME_ORGANIZATION
    )


def segment_stats(spec: SegmentSpec, prediction: Prediction) -> ClassStats:
    """Figures of one segment as ``class_stats`` made them: the "Spine" union's (V or T1), or its one class's."""
    return prediction.classes[SPINE if len(spec.classes) > 1 else spec.classes[0].name]


def measurements(stats: ClassStats) -> list[hd.sr.Measurement]:
    """The numeric measurements of one segment; figures that are unknown are left out."""
    area_unit = UNIT_MM2 if stats.area_unit == "mm2" else UNIT_PIXELS
    items = [
        hd.sr.Measurement(name=AREA, value=float(stats.area), unit=area_unit),
        hd.sr.Measurement(name=COVERAGE, value=float(stats.coverage_percent), unit=UNIT_PERCENT),
    ]
    if stats.mean_confidence is not None:
        items.append(
            hd.sr.Measurement(name=PROBABILITY, value=float(stats.mean_confidence), unit=UNIT_RATIO, derivation=MEAN)
        )
    if stats.flip_dice is not None:
        items.append(hd.sr.Measurement(name=FLIP_DICE, value=float(stats.flip_dice), unit=UNIT_RATIO))
    if stats.flip_jaccard is not None:
        items.append(hd.sr.Measurement(name=FLIP_JACCARD, value=float(stats.flip_jaccard), unit=UNIT_RATIO))
    return items


def segment_group(
    spec: SegmentSpec,
    card: ModelCard,
    source: Dataset,
    region: SegmentRegion,
    items: Sequence[hd.sr.Measurement],
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """A measurement group about one segment: tracking identifier and UID (shared with the SEG), its
    region on ``source``, finding type, the model as algorithm and ``items``."""
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid(source.SOPInstanceUID, card.name, card.weights_sha256, spec.label),
            identifier=spec.tracking_id,
        ),
        referenced_region=image_region(region.points, source),
        finding_type=spec.property_type,
        algorithm_id=algorithm_id(card),
        geometric_purpose=region.purpose,
        measurements=list(items),
    )


def analysed_image_group(card: ModelCard, source: Dataset) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """The one group of an unreliable prediction's report: the image as analysed, found to give no reliable
    segmentation, with no measurement. OHIF 3.13 fails to open an SR without a group it can draw ("reading
    'displaySetInstanceUID'"); a TID 1410 group may carry no measurement (its rows are 0-n)."""
    rows, cols = float(source.Rows), float(source.Columns)
    edges = np.array([[0.0, 0.0], [cols, 0.0], [cols, rows], [0.0, rows], [0.0, 0.0]])
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid(source.SOPInstanceUID, card.name, card.weights_sha256, "analysed-image"),
            identifier=NO_RELIABLE_SEGMENTATION.meaning,
        ),
        referenced_region=image_region(edges, source),
        finding_type=NO_RELIABLE_SEGMENTATION,
        algorithm_id=algorithm_id(card),
    )


def measurement_groups(
    prediction: Prediction, card: ModelCard, source: Dataset
) -> tuple[list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations], list[str]]:
    """The groups of the segments that have pixels, and a statement for each segment that has none."""
    groups, notes = [], []
    for spec in SEGMENTS:
        region = segment_region(spec.mask(prediction.labels))
        if region is None:
            notes.append(f'Segment "{spec.label}" is empty: no pixel was segmented as {spec.label}')
            continue
        groups.append(segment_group(spec, card, source, region, measurements(segment_stats(spec, prediction))))
    return groups, notes


def observation_context(card: ModelCard, manufacturer: str) -> hd.sr.ObservationContext:
    """The model as the device observer."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid(card.name, card.weights_sha256),
        name=card.display_name or card.name,
        manufacturer_name=manufacturer,
        model_name=card.name,
        serial_number=card.version,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def qualitative_evaluations(findings: Sequence[str], comments: Sequence[str]) -> hd.sr.ContainerContentItem:
    """TID 1500's "Qualitative Evaluations" container with a "Finding" text per finding and a "Comment"
    text per comment."""
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(name=name, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
            for name, texts in ((FINDING, findings), (COMMENT, comments))
            for text in texts
        ]
    )
    return container


def _without_imaging_measurements(report: hd.sr.MeasurementReport) -> hd.sr.MeasurementReport:
    """``report`` less its "Imaging Measurements" container (a report of qualitative evaluations only)."""
    content = report[0].ContentSequence
    kept = [item for item in content if item.ConceptNameCodeSequence[0].CodeValue != IMAGING_MEASUREMENTS.value]
    report[0].ContentSequence = hd.sr.ContentSequence(kept)
    return report


def measurement_report(
    source: Dataset,
    groups: Sequence[
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations
    ],
    context: hd.sr.ObservationContext,
) -> hd.sr.MeasurementReport:
    """TID 1500 with the source in its Image Library, or without the library when highdicom cannot
    describe the source (its descriptors need e.g. Patient Orientation and Imager Pixel Spacing for a
    radiograph). A failure for another reason fails the second attempt too, so nothing is hidden.

    Without groups the report has no "Imaging Measurements" container: TID 1500 needs one of its
    measurement or qualitative evaluation containers (rows 6, 8, 10: "at least one"), highdicom always
    builds the first with at least one group, so it is built with a placeholder group and taken out.
    """
    placeholder = [
        hd.sr.MeasurementsAndQualitativeEvaluations(tracking_identifier=hd.sr.TrackingIdentifier(identifier="none"))
    ]

    def report(library: list[Dataset] | None) -> hd.sr.MeasurementReport:
        return hd.sr.MeasurementReport(
            observation_context=context,
            procedure_reported=PROCEDURE_REPORTED,
            imaging_measurements=groups or placeholder,
            title=codes.cid7021.ImagingMeasurementReport,
            referenced_images=library,
        )

    try:
        built = report([source])
    except LIBRARY_ERRORS as exc:
        log.debug("source left out of the SR image library: %s", exc)
        built = report(None)
    return built if groups else _without_imaging_measurements(built)


def comprehensive_sr(
    source: Dataset,
    evidence: Sequence[Dataset],
    groups: Sequence[
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations
    ],
    card: ModelCard,
    *,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    manufacturer: str,
    series_description: str,
    software_versions: str | Sequence[str],
    findings: Sequence[str] = (),
    comments: Sequence[str] = (),
) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 report of ``groups`` by ``card``'s model on ``source``, as a Comprehensive 3D SR in the
    source's study that declares the private coding scheme and lists ``evidence`` (source first);
    ``findings`` and ``comments`` are its qualitative evaluations (free text).
    """
    report = measurement_report(source, groups, observation_context(card, manufacturer))
    if findings or comments:
        report[0].ContentSequence.append(qualitative_evaluations(findings, comments))
    return hd.sr.Comprehensive3DSR(
        evidence=list(evidence),
        content=report[0],
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=INSTANCE_NUMBER,
        manufacturer=manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=series_description,
        manufacturer_model_name=card.display_name or card.name,
        software_versions=software_versions if isinstance(software_versions, str) else tuple(software_versions),
        device_serial_number=card.version,
        coding_schemes=[coding_scheme()],
    )


def build_measurement_report(
    source: Dataset,
    seg: Dataset | None,
    prediction: Prediction,
    card: ModelCard,
    *,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    manufacturer: str,
    series_description: str,
    software_versions: str | Sequence[str],
    disclaimer: str | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The Measurement Report for ``prediction`` on ``source`` (``seg``: the SEG written with it, if any).

    A prediction whose quality flag says it is not reliable gets no measurements: one group whose region
    is the whole image analysed and whose finding is "No reliable segmentation" (``analysed_image_group``),
    and the reasons among the report's findings.
    """
    groups: list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations]
    if prediction.quality.reliable:
        planar, findings = measurement_groups(prediction, card, source)
        spine, not_measured = spine_groups(prediction.measurements, card, source)
        groups, findings = [*planar, *spine], [*findings, *not_measured]
    else:
        groups, findings = [analysed_image_group(card, source)], [prediction.quality.statement]
    return comprehensive_sr(
        source,
        [source] if seg is None else [source, seg],
        groups,
        card,
        series_uid=series_uid,
        sop_uid=sop_uid,
        series_number=series_number,
        manufacturer=manufacturer,
        series_description=series_description,
        software_versions=software_versions,
        findings=findings,
        comments=[disclaimer] if disclaimer else [],
    )


__all__ = [
    "COMMENT",
    "COVERAGE",
    "FLIP_DICE",
    "FLIP_JACCARD",
    "PRIVATE_SCHEME",
    "UNIT_PIXELS",
    "UNIT_RATIO",
    "build_measurement_report",
    "coding_scheme",
    "comprehensive_sr",
    "measurement_groups",
    "measurements",
    "segment_group",
    "segment_stats",
]

"""The TID 1500 Measurement Report of one prediction, as a Comprehensive 3D SR.

One measurement group per SEG segment. Each group is highdicom's ROI flavour of "Measurements and
Qualitative Evaluations" that references a whole segment (TID 1411 with DCM 121191 "Referenced Segment",
no frame numbers: the planar TID 1410 form needs a "Referenced Segmentation Frame", which names a frame
of a single-frame-per-segment SEG and a source frame that a single-frame radiograph does not have). The
group carries the segment's Tracking Identifier and UID (the same as in the SEG), the algorithm (TID
4019: model name, weights version, AI family) and these measurements:

* area, SCT 42798000, in mm2 (or in ``{pixels}`` when the image has no pixel spacing);
* mean probability: DCM 122157 "Probability" with derivation SCT 373098007 "Mean" (the mean of the
  per-pixel maximum softmax over the segment);
* coverage: the percentage of image pixels in the segment (private code, scheme 99SPINESEG);
* flip agreement: Dice and Jaccard between the prediction and the prediction of the horizontally
  flipped image (private codes whose meanings say exactly that; a stability signal, not an accuracy).

Demo models get a "Comment" text with the disclaimer in every group. The document evidence lists only
the source image and the SEG; the source is also described in the Image Library when highdicom can
describe it.

``segment_group`` and ``comprehensive_sr`` are shared with the evaluation SR
(``dicom_node.writers.evaluation_sr``), which carries true Dice/Jaccard against a reference SEG.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_node.uids import device_uid, tracking_uid
from dicom_node.writers.seg import SEGMENT_CATEGORY, SEGMENTS, SegmentSpec
from inference.model_card import ModelCard
from inference.prediction import SPINE, ClassStats, Prediction

log = logging.getLogger(__name__)

PRIVATE_SCHEME = "99SPINESEG"
PRIVATE_SCHEME_NAME = "SpineNode segmentation measures"
PRIVATE_SCHEME_ORGANIZATION = "SpineNode"
COVERAGE = Code("SPN-COVERAGE", PRIVATE_SCHEME, "Percentage of image pixels in segment")
FLIP_DICE = Code("SPN-FLIP-DICE", PRIVATE_SCHEME, "Dice agreement with flipped-input prediction")
FLIP_JACCARD = Code("SPN-FLIP-JACCARD", PRIVATE_SCHEME, "Jaccard agreement with flipped-input prediction")
AREA = codes.SCT.Area
PROBABILITY = codes.DCM.Probability
MEAN = codes.SCT.Mean
COMMENT = codes.DCM.Comment
UNIT_MM2 = codes.UCUM.SquareMillimeter
UNIT_PIXELS = Code("{pixels}", "UCUM", "Pixels")
UNIT_PERCENT = codes.UCUM.Percent
UNIT_RATIO = codes.UCUM.NoUnits
PROJECTION_MODALITIES = frozenset({"CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA"})
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
    seg: Dataset,
    items: Sequence[hd.sr.Measurement],
    comments: Sequence[str] = (),
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """A measurement group about one segment of ``seg`` as a whole: tracking identifier (shared with the
    SEG), finding type, the model as algorithm, ``items`` and a "Comment" text per entry of ``comments``.
    """
    reference = hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=spec.number,
        source_images=[
            hd.sr.SourceImageForSegmentation(
                referenced_sop_class_uid=source.SOPClassUID, referenced_sop_instance_uid=source.SOPInstanceUID
            )
        ],
    )
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid(source.SOPInstanceUID, card.name, card.weights_sha256, spec.label),
            identifier=spec.tracking_id,
        ),
        referenced_segment=reference,
        finding_category=SEGMENT_CATEGORY,
        finding_type=spec.property_type,
        algorithm_id=hd.sr.AlgorithmIdentification(
            name=card.name, version=card.version, family=codes.DCM.ArtificialIntelligence
        ),
        measurements=list(items),
    )
    for text in comments:
        group[0].ContentSequence.append(
            hd.sr.TextContentItem(name=COMMENT, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        )
    return group


def measurement_group(
    spec: SegmentSpec,
    prediction: Prediction,
    card: ModelCard,
    source: Dataset,
    seg: Dataset,
    disclaimer: str | None,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """The measurement group of one segment of a prediction, referencing that segment of the SEG."""
    items = measurements(segment_stats(spec, prediction))
    return segment_group(spec, card, source, seg, items, [disclaimer] if disclaimer else [])


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


def procedure_reported(source: Dataset) -> Code:
    """CID 100 procedure: an X-ray for projection images, else a generic imaging procedure."""
    if str(source.get("Modality", "")) in PROJECTION_MODALITIES:
        return codes.cid100.XRUnspecifiedBodyRegion
    return codes.cid100.ImagingProcedure


def measurement_report(
    source: Dataset,
    groups: Sequence[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations],
    context: hd.sr.ObservationContext,
) -> hd.sr.MeasurementReport:
    """TID 1500 with the source in its Image Library, or without the library when highdicom cannot
    describe the source (its descriptors need e.g. Patient Orientation and Imager Pixel Spacing for a
    radiograph). A failure for another reason fails the second attempt too, so nothing is hidden.
    """

    def report(library: list[Dataset] | None) -> hd.sr.MeasurementReport:
        return hd.sr.MeasurementReport(
            observation_context=context,
            procedure_reported=procedure_reported(source),
            imaging_measurements=groups,
            title=codes.cid7021.ImagingMeasurementReport,
            referenced_images=library,
        )

    try:
        return report([source])
    except LIBRARY_ERRORS as exc:
        log.debug("source left out of the SR image library: %s", exc)
        return report(None)


def comprehensive_sr(
    source: Dataset,
    evidence: Sequence[Dataset],
    groups: Sequence[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations],
    card: ModelCard,
    *,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    manufacturer: str,
    series_description: str,
    software_versions: str | Sequence[str],
) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 report of ``groups`` by ``card``'s model on ``source``, as a Comprehensive 3D SR in the
    source's study that declares the private coding scheme and lists ``evidence`` (source first).
    """
    report = measurement_report(source, groups, observation_context(card, manufacturer))
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
    seg: Dataset,
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
    """The Measurement Report for ``prediction`` on ``source``, referencing ``seg`` (already built)."""
    groups = [measurement_group(spec, prediction, card, source, seg, disclaimer) for spec in SEGMENTS]
    return comprehensive_sr(
        source,
        [source, seg],
        groups,
        card,
        series_uid=series_uid,
        sop_uid=sop_uid,
        series_number=series_number,
        manufacturer=manufacturer,
        series_description=series_description,
        software_versions=software_versions,
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
    "measurement_group",
    "measurements",
    "segment_group",
    "segment_stats",
]

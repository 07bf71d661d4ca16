"""The evaluation report: the model's true Dice and Jaccard against a reference SEG, as TID 1500.

A Comprehensive 3D SR in the source's study, in a series of its own per reference SEG (deterministic
UIDs: source, model, weights and the reference's SOP Instance UID). Its evidence is the source image, our
SEG and the reference SEG. One measurement group per matched segment that our SEG does not leave empty,
built like the regular report's (``sr.segment_group``: the segment's region on the source, the same
tracking identifier as the SEG segment, the model as algorithm and as device observer), carrying:

* "Dice similarity coefficient" and "Jaccard index" (no standard codes exist: private scheme 99SPINESEG,
  declared in the SR), left out when both masks are empty and the figures are undefined;
* the pixel counts of the predicted mask, the reference mask and their intersection (``{pixels}``);
and, in the report's qualitative evaluations, a "Comment" naming the reference segment(s) each group
compares with and the demo disclaimer for demo models (a segment we left empty is stated there too,
with its figures: no image region can be drawn for it).
"""

from __future__ import annotations

from datetime import datetime

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from dicom_node.reference.compare import SegmentComparison
from dicom_node.writers import uids
from dicom_node.writers.outputs import MANUFACTURER, description, disclaimer, software_version
from dicom_node.writers.provenance import stamp
from dicom_node.writers.regions import segment_region
from dicom_node.writers.source import writable_source
from dicom_node.writers.sr import PRIVATE_SCHEME, UNIT_PIXELS, UNIT_RATIO, comprehensive_sr, segment_group
from inference.model_card import ModelCard

DICE = Code("SPN-DICE", PRIVATE_SCHEME, "Dice similarity coefficient")
JACCARD = Code("SPN-JACCARD", PRIVATE_SCHEME, "Jaccard index")
PREDICTED_PIXELS = Code("SPN-PRED-PIXELS", PRIVATE_SCHEME, "Pixels in predicted segment")
REFERENCE_PIXELS = Code("SPN-REF-PIXELS", PRIVATE_SCHEME, "Pixels in reference segment")
INTERSECTION_PIXELS = Code("SPN-BOTH-PIXELS", PRIVATE_SCHEME, "Pixels in predicted and reference segment")
EVAL_SR_SERIES_NUMBER = 904


def comparison_measurements(comparison: SegmentComparison) -> list[hd.sr.Measurement]:
    """Dice, Jaccard (when defined) and the three pixel counts of one compared segment."""
    counts = comparison.overlap
    items = []
    if comparison.dice is not None and comparison.jaccard is not None:
        items += [
            hd.sr.Measurement(name=DICE, value=float(comparison.dice), unit=UNIT_RATIO),
            hd.sr.Measurement(name=JACCARD, value=float(comparison.jaccard), unit=UNIT_RATIO),
        ]
    items += [
        hd.sr.Measurement(name=PREDICTED_PIXELS, value=float(counts.predicted), unit=UNIT_PIXELS),
        hd.sr.Measurement(name=REFERENCE_PIXELS, value=float(counts.reference), unit=UNIT_PIXELS),
        hd.sr.Measurement(name=INTERSECTION_PIXELS, value=float(counts.intersection), unit=UNIT_PIXELS),
    ]
    return items


def comparison_comment(comparison: SegmentComparison, reference: Dataset) -> str:
    """Which reference segment(s) the figures of our segment compare with."""
    segments = ", ".join(
        f'{number} "{label}"'
        for number, label in zip(comparison.reference_segments, comparison.reference_labels, strict=True)
    )
    return (
        f'"{comparison.spec.label}" compared at the image\'s native resolution with segment {segments} of the '
        f"reference segmentation {reference.SOPInstanceUID}"
    )


def empty_segment_finding(comparison: SegmentComparison) -> str:
    """The figures of a segment our SEG leaves empty (no region to measure in)."""
    counts = comparison.overlap
    return (
        f'"{comparison.spec.label}": no pixel predicted; the reference segment has {counts.reference} pixels '
        f"(Dice 0, Jaccard 0)"
        if counts.reference
        else f'"{comparison.spec.label}": empty in both segmentations (Dice and Jaccard undefined)'
    )


def build_evaluation_report(
    source: Dataset,
    seg: Dataset,
    reference: Dataset,
    comparisons: list[SegmentComparison],
    card: ModelCard,
    started: datetime | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The evaluation SR of our ``seg`` (made by ``card``'s model on ``source``) against ``reference``;
    ``started``: when the comparison began (default: now)."""
    source = writable_source(source)  # the header gaps real sources have, completed as for our other outputs

    def uid(kind: str) -> str:
        return uids.evaluation_uid(
            source.SOPInstanceUID, card.name, card.weights_sha256, str(reference.SOPInstanceUID), kind
        )

    warning = disclaimer(card)
    groups, findings = [], []
    for c in comparisons:
        region = segment_region(c.predicted)
        if region is None:
            findings.append(empty_segment_finding(c))
            continue
        groups.append(segment_group(c.spec, card, source, region, comparison_measurements(c)))
    comments = [comparison_comment(c, reference) for c in comparisons]
    software = software_version()
    report = comprehensive_sr(
        source,
        [source, seg, reference],
        groups,
        card,
        series_uid=uid(uids.EVAL_SR_SERIES),
        sop_uid=uid(uids.EVAL_SR),
        series_number=EVAL_SR_SERIES_NUMBER,
        manufacturer=MANUFACTURER,
        series_description=description("Spine accuracy vs reference", card),
        software_versions=software,
        findings=findings,
        comments=[*comments, *([warning] if warning else [])],
    )
    stamp([report], card, MANUFACTURER, software, started or datetime.now())
    return report


__all__ = [
    "DICE",
    "EVAL_SR_SERIES_NUMBER",
    "INTERSECTION_PIXELS",
    "JACCARD",
    "PREDICTED_PIXELS",
    "REFERENCE_PIXELS",
    "build_evaluation_report",
    "comparison_measurements",
]

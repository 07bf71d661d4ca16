"""The evaluation report: the model's true Dice and Jaccard against a reference SEG, as TID 1500.

A Comprehensive 3D SR in the source's study, in a series of its own per reference SEG (deterministic
UIDs: source, model, weights and the reference's SOP Instance UID). Its evidence is the source image, our
SEG and the reference SEG. One measurement group per matched segment, built like the regular report's
(``sr.segment_group``: same tracking identifier as the SEG segment, the model as algorithm, the model as
device observer), carrying:

* "Dice similarity coefficient" and "Jaccard index" (no standard codes exist: private scheme 99SPINESEG,
  declared in the SR), left out when both masks are empty and the figures are undefined;
* the pixel counts of the predicted mask, the reference mask and their intersection (``{pixels}``);
* a "Comment" naming the reference segment(s) compared, and the demo disclaimer for demo models.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from dicom_node import uids
from dicom_node.seg_compare import SegmentComparison
from dicom_node.writers.outputs import MANUFACTURER, description, disclaimer, software_version
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
    """Which reference segment(s) the figures compare with."""
    segments = ", ".join(
        f'{number} "{label}"'
        for number, label in zip(comparison.reference_segments, comparison.reference_labels, strict=True)
    )
    return (
        f"Compared at the image's native resolution with segment {segments} of the reference segmentation "
        f"{reference.SOPInstanceUID}"
    )


def build_evaluation_report(
    source: Dataset,
    seg: Dataset,
    reference: Dataset,
    comparisons: list[SegmentComparison],
    card: ModelCard,
) -> hd.sr.Comprehensive3DSR:
    """The evaluation SR of our ``seg`` (made by ``card``'s model on ``source``) against ``reference``."""
    source = writable_source(source)  # the header gaps real sources have, completed as for our other outputs

    def uid(kind: str) -> str:
        return uids.evaluation_uid(
            source.SOPInstanceUID, card.name, card.weights_sha256, str(reference.SOPInstanceUID), kind
        )

    warning = disclaimer(card)
    groups = [
        segment_group(
            c.spec,
            card,
            source,
            seg,
            comparison_measurements(c),
            [comparison_comment(c, reference), *([warning] if warning else [])],
        )
        for c in comparisons
    ]
    return comprehensive_sr(
        source,
        [source, seg, reference],
        groups,
        card,
        series_uid=uid(uids.EVAL_SR_SERIES),
        sop_uid=uid(uids.EVAL_SR),
        series_number=EVAL_SR_SERIES_NUMBER,
        manufacturer=MANUFACTURER,
        series_description=description("Spine accuracy vs reference", card),
        software_versions=software_version(),
    )


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

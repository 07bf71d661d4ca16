"""True overlap between the node's SEG and a reference SEG of the same source image.

Segments are matched by Segmented Property Type, the one thing a reader's tool and the node agree on:
SCT 421060004 "Spine" (our "Spine" segment, V ∪ T1) and SCT 64864005 "T1 vertebra" (``SEGMENTS``).
A segment of another type matches only by its label (``LABEL_ALIASES``, case-insensitive): OHIF exports
segments drawn from scratch with the generic type "Tissue" and the label the reader typed. Segments
matched to the same one of ours are united (a reader may draw the column in pieces); others are ignored.
Both masks are read for the source image (per-frame Derivation Image Sequence) at the source's native
resolution; a FRACTIONAL reference is thresholded at one half. Dice and Jaccard come from
``inference.analysis.metrics.overlap``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom import dcmread

from dicom_node.writers.seg import SEGMENTS, SPINE_SEGMENT, T1_SEGMENT, SegmentSpec
from inference.analysis.metrics import Overlap, overlap

FRACTIONAL_THRESHOLD = 0.5  # a FRACTIONAL reference pixel belongs to the segment from this value up
# What highdicom raises when a SEG has no frame for the source or its frames do not fit it.
READ_ERRORS = (ValueError, KeyError, IndexError, AttributeError, RuntimeError)
# Labels that name our segments when a segment's property type is none of ours (compared casefolded).
LABEL_ALIASES: dict[int, frozenset[str]] = {
    SPINE_SEGMENT: frozenset({"spine", "vertebral column", "spinal column"}),
    T1_SEGMENT: frozenset({"t1", "t1 vertebra", "first thoracic vertebra"}),
}


def read_segmentation(path: str | Path) -> hd.seg.Segmentation:
    """A SEG file as highdicom's Segmentation, also when its Pixel Measures lack Slice Thickness.

    highdicom itself writes such Pixel Measures for a radiograph with Pixel Spacing (as do other tools),
    and its reader then refuses the file. The comparison is made in pixels, so an incomplete Pixel Measures
    is left out of the in-memory copy (the file is not touched).
    """
    ds = dcmread(path)
    for group in [*ds.get("SharedFunctionalGroupsSequence", []), *ds.get("PerFrameFunctionalGroupsSequence", [])]:
        measures = group.get("PixelMeasuresSequence")
        if measures and "SliceThickness" not in measures[0]:
            del group.PixelMeasuresSequence
    return hd.seg.Segmentation.from_dataset(ds, copy=False)


class UnusableReference(ValueError):
    """A reference that cannot be compared: no segment we predict, or its masks do not fit the source."""


@dataclass(frozen=True)
class SegmentComparison:
    """One of our segments against the reference segments of the same type."""

    spec: SegmentSpec
    reference_segments: tuple[int, ...]  # the reference's segment numbers, united
    reference_labels: tuple[str, ...]
    overlap: Overlap
    predicted: np.ndarray = field(repr=False, compare=False)  # our segment's mask on the source image

    @property
    def dice(self) -> float | None:
        return self.overlap.dice

    @property
    def jaccard(self) -> float | None:
        return self.overlap.iou


def matching_segments(seg: hd.seg.Segmentation) -> dict[int, tuple[int, ...]]:
    """Our segment number -> the numbers of ``seg``'s segments of the same property type (only matches)."""
    found: dict[int, list[int]] = {}
    for number in seg.segment_numbers:
        description = seg.get_segment_description(number)
        kind = description.segmented_property_type
        label = str(description.segment_label).strip().casefold()
        by_type = [spec for spec in SEGMENTS if kind == spec.property_type]  # Code equality maps SRT to SCT
        by_label = [spec for spec in SEGMENTS if label in LABEL_ALIASES.get(spec.number, ())]
        for spec in by_type or by_label:
            found.setdefault(spec.number, []).append(number)
    return {ours: tuple(numbers) for ours, numbers in found.items()}


def frame_sources(seg: hd.seg.Segmentation) -> set[str]:
    """SOP Instance UIDs of the images the SEG's frames are derived from (per-frame Derivation Image)."""
    return {
        str(image.ReferencedSOPInstanceUID)
        for frame in seg.get("PerFrameFunctionalGroupsSequence", [])
        for derivation in frame.get("DerivationImageSequence", [])
        for image in derivation.get("SourceImageSequence", [])
        if "ReferencedSOPInstanceUID" in image
    }


def segment_masks(seg: hd.seg.Segmentation, source_uid: str, numbers: Sequence[int]) -> dict[int, np.ndarray]:
    """Boolean (rows, columns) mask of each segment in ``numbers`` for the source image ``source_uid``.

    A segment without a frame for the source (a SEG may omit empty frames) is empty; callers check first
    that some frame is derived from the source (:func:`frame_sources`).
    """
    pixels = seg.get_pixels_by_source_instance(
        [source_uid], segment_numbers=list(numbers), assert_missing_frames_are_empty=True
    )
    if seg.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL:
        planes = pixels[0] >= FRACTIONAL_THRESHOLD
    else:
        planes = pixels[0] > 0
    return {number: planes[..., index] for index, number in enumerate(numbers)}


def _united(masks: dict[int, np.ndarray], numbers: Sequence[int]) -> np.ndarray:
    return np.logical_or.reduce([masks[n] for n in numbers])


def compare(ours: hd.seg.Segmentation, reference: hd.seg.Segmentation, source_uid: str) -> list[SegmentComparison]:
    """Compare each of our segments that the reference also has, on source image ``source_uid``.

    Raises :class:`UnusableReference` when the reference has no segment we predict or its masks cannot
    be read for the source at the source's size. A failure to read our own SEG is a plain error.
    """
    wanted = matching_segments(reference)
    if not wanted:
        types = ", ".join(f"{s.label} ({s.property_type.scheme_designator} {s.property_type.value})" for s in SEGMENTS)
        raise UnusableReference(f"no reference segment of a type we predict: {types}, nor labelled as one")
    mine = matching_segments(ours)
    wanted = {number: refs for number, refs in wanted.items() if number in mine}
    if not wanted:
        raise UnusableReference("our SEG has none of the segment types the reference has")
    if source_uid not in frame_sources(reference):
        raise UnusableReference("no frame of the reference is derived from the image (Derivation Image Sequence)")
    ref_numbers = sorted({n for refs in wanted.values() for n in refs})
    try:
        ref_masks = segment_masks(reference, source_uid, ref_numbers)
    except READ_ERRORS as exc:
        raise UnusableReference(f"reference masks unreadable for the source image: {exc}") from exc
    our_masks = segment_masks(ours, source_uid, sorted({n for refs in mine.values() for n in refs}))
    size = next(iter(our_masks.values())).shape
    ref_size = next(iter(ref_masks.values())).shape
    if ref_size != size:
        raise UnusableReference(f"reference masks are {ref_size[0]}x{ref_size[1]}, the image {size[0]}x{size[1]}")
    comparisons = []
    for spec in SEGMENTS:
        refs = wanted.get(spec.number)
        if refs is None:
            continue
        labels = tuple(str(reference.get_segment_description(n).segment_label) for n in refs)
        predicted = _united(our_masks, mine[spec.number])
        counts = overlap(predicted, _united(ref_masks, refs))
        comparisons.append(SegmentComparison(spec, refs, labels, counts, predicted))
    return comparisons


__all__ = [
    "LABEL_ALIASES",
    "SegmentComparison",
    "UnusableReference",
    "compare",
    "frame_sources",
    "matching_segments",
    "segment_masks",
]

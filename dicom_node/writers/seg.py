"""The DICOM Segmentation (SEG) of one prediction: a BINARY SEG with the segments "Spine" and "T1 vertebra",
and, for a model that predicts vertebra levels (and unless ``[node] vertebra_segments = false``), one more
segment per vertebra found, T1..L5 in order (numbers 3, 4, ...; SNOMED CT vertebra codes; labels "T1",
"T2", ...; colours alternating so that neighbours differ). Each segment is a full frame: a 2500 x 1300
radiograph adds ~0.4 MB per vertebra.

The SEG is built with ``highdicom.seg.Segmentation`` and then completed where highdicom leaves a single
2D projection image (no Frame of Reference) short:

* Patient Orientation is copied from the source (highdicom leaves it out; it is type 2C for SEG), and
  so is Body Part Examined. Laterality is not: dciodvfy rejects it in a SEG whatever the body part
  (its General Series condition for this IOD), while PixelMed asks for it (``tests/pixelmed.py``).
* A shared Pixel Measures item always: OHIF 3.13's SEG viewport reads it and fails without one. It carries
  the source's spacing (Pixel Spacing, else Imager Pixel Spacing) when that is usable, and Slice
  Thickness only when the source has one: a radiograph has no slice and none is invented. For a SEG
  without a Frame of Reference both are optional (PS3.3 C.7.6.16.2.1, as corrected by CP 1426), and the
  item may be empty. highdicom's reader insists on Slice Thickness in any Pixel Measures and refuses such
  a SEG; ``seg_compare.read_segmentation`` reads it (``tests/dicom_node/writers/test_writers.py`` pins both).
* A SEG whose 1-bit pixel data would have an odd number of bytes is written as FRACTIONAL (OCCUPANCY,
  only 0 and the Maximum Fractional Value: the same binary mask, 8 bits a pixel). PS3.5 8.1.1 pads such
  pixel data with one byte to an even length, and OHIF 3.13 fails on the padded SEG, whether its frames
  are whole bytes or not (``tests/dicom_node/viewers/test_ohif.py``: a 616 x 209 radiograph's 19 frames of
  16 093 bytes each). Every frame counts: with a segment per vertebra a SEG has 2 + 17 frames. A
  FRACTIONAL occupancy of 0 or 1 is the standard's other encoding of the same segment (PS3.3 C.8.20.2.3),
  and its byte count is always even; OHIF reads a fractional SEG of only 0 and the maximum as binary.
* A shared Plane Orientation (Patient) is added so that OHIF (>= 3.9) can load a SEG of a 2D image: its
  loader reads the orientation of the SEG and compares it with that of the source, for which it assumes
  rows along +x and columns along +y when the source has none.
* Every frame keeps its Derivation Image Sequence (Weasis and OHIF match SEG frames to the source image
  through it) and the SEG keeps its Referenced Series Sequence (OHIF finds the source series with it);
  both are checked and added if a highdicom version leaves them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.valuerep import format_number_as_ds

from dicom_node.writers.source import pixel_spacing_mm
from dicom_node.writers.uids import tracking_uid
from inference.analysis.boxes import bounding_box
from inference.analysis.levels import VERTEBRAE, vertebra_label
from inference.classes import CLASS_COLOURS, SpineClass
from inference.model_card import ModelCard

ALGORITHM_FAMILY = codes.DCM.ArtificialIntelligence
SEGMENT_CATEGORY = codes.SCT.AnatomicalStructure
SPINE_SEGMENT = 1
T1_SEGMENT = 2
CONTENT_LABEL = "SPINENODE"
INSTANCE_NUMBER = 1
BITS_PER_BYTE = 8
# Orientation OHIF assumes for a 2D image without Image Orientation (Patient): rows +x, columns +y.
DEFAULT_2D_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SOURCE_IMAGE_PURPOSE = codes.DCM.SourceImageForImageProcessingOperation
SEGMENTATION_DERIVATION = codes.DCM.SegmentationImageDerivation  # DCM 113076 "Segmentation"


@dataclass(frozen=True)
class SegmentSpec:
    """One segment of the SEG: its number, label, coded type and the label classes it covers."""

    number: int
    label: str
    tracking_id: str
    property_type: Code
    classes: tuple[SpineClass, ...]
    colour: tuple[int, int, int]

    def mask(self, labels: np.ndarray) -> np.ndarray:
        """The segment's pixels in a label image."""
        mask = labels == self.classes[0]
        for cls in self.classes[1:]:  # one comparison per class (np.isin sorts the whole image)
            mask |= labels == cls
        return mask


SEGMENTS: tuple[SegmentSpec, ...] = (
    SegmentSpec(
        SPINE_SEGMENT,
        "Spine",
        "Spine",
        codes.SCT.Spine,
        (SpineClass.V, SpineClass.T1),
        CLASS_COLOURS[SpineClass.V],
    ),
    SegmentSpec(
        T1_SEGMENT,
        "T1 vertebra",
        "T1 vertebra",
        codes.SCT.T1Vertebra,
        (SpineClass.T1,),
        CLASS_COLOURS[SpineClass.T1],
    ),
)


LEVEL_COLOURS = ((255, 200, 0), (0, 170, 255), (220, 0, 220))  # cycled along the spine: neighbours differ


@dataclass(frozen=True)
class VertebraSegment:
    """A vertebra level's segment: its number in the SEG, the vertebra ("T1" .. "L5") and its label value."""

    number: int
    name: str
    label: int

    @property
    def property_type(self) -> Code:
        return getattr(codes.SCT, f"{self.name}Vertebra")


def vertebra_segments(levels: np.ndarray | None) -> list[VertebraSegment]:
    """The vertebrae found in ``levels`` (level labels), numbered after the two fixed segments."""
    if levels is None:
        return []
    present = set(np.unique(levels).tolist())
    found = [(name, vertebra_label(k)) for k, name in enumerate(VERTEBRAE) if vertebra_label(k) in present]
    return [VertebraSegment(len(SEGMENTS) + 1 + i, name, label) for i, (name, label) in enumerate(found)]


def algorithm_identification(card: ModelCard) -> hd.AlgorithmIdentificationSequence:
    """The model as the SEG's Segment Algorithm Identification (name, weights version, AI family)."""
    return hd.AlgorithmIdentificationSequence(name=card.name, family=ALGORITHM_FAMILY, version=card.version)


def segment_descriptions(
    card: ModelCard, source_sop_uid: str, vertebrae: Sequence[VertebraSegment] = ()
) -> list[hd.seg.SegmentDescription]:
    """Segment descriptions with tracking identifiers shared with the SR's measurement groups."""
    algorithm = algorithm_identification(card)

    def description(number: int, label: str, kind: Code, colour: tuple[int, int, int]) -> hd.seg.SegmentDescription:
        return hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=SEGMENT_CATEGORY,
            segmented_property_type=kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=tracking_uid(source_sop_uid, card.name, card.weights_sha256, label),
            tracking_id=label,
            display_color=hd.color.CIELabColor.from_rgb(*colour),
        )

    fixed = [description(spec.number, spec.label, spec.property_type, spec.colour) for spec in SEGMENTS]
    levels = [
        description(v.number, v.name, v.property_type, LEVEL_COLOURS[i % len(LEVEL_COLOURS)])
        for i, v in enumerate(vertebrae)
    ]
    return fixed + levels


def segment_array(
    labels: np.ndarray, levels: np.ndarray | None = None, vertebrae: Sequence[VertebraSegment] = ()
) -> np.ndarray:
    """(1, rows, columns, segments) boolean array of the segments, in segment-number order.

    Each segment's plane is contiguous in memory (the array is a view of (segments, rows, columns)):
    highdicom reads the planes one by one, and writing them strided cost twice the time. The planes start
    zeroed and are filled only inside the bounding box of the foreground (the column is a narrow part of a
    radiograph)."""
    planes = np.zeros((len(SEGMENTS) + len(vertebrae), *labels.shape), dtype=bool)
    foreground = labels != int(SpineClass.F)
    if levels is not None:
        foreground |= levels > 0
    box = bounding_box(foreground)
    if box is None:
        return np.moveaxis(planes, 0, -1)[None]
    for index, spec in enumerate(SEGMENTS):
        planes[index][box] = spec.mask(labels[box])
    for index, v in enumerate(vertebrae, start=len(SEGMENTS)):
        assert levels is not None
        np.equal(levels[box], v.label, out=planes[index][box])
    return np.moveaxis(planes, 0, -1)[None]


def segmentation_type(rows: int, cols: int, frames: int) -> hd.seg.SegmentationTypeValues:
    """BINARY, or FRACTIONAL when BINARY's packed pixel data (``frames`` frames, one per segment) would
    need a pad byte (OHIF 3.13 fails on it)."""
    packed_bytes = -(-rows * cols * frames // BITS_PER_BYTE)
    if packed_bytes % 2:
        return hd.seg.SegmentationTypeValues.FRACTIONAL
    return hd.seg.SegmentationTypeValues.BINARY


def pixel_measures_for(source: Dataset) -> hd.PixelMeasuresSequence | None:
    """Pixel Measures for highdicom's constructor when the source has a spacing and a Slice Thickness, else
    ``None`` (the item is then written by ``_complete_2d_geometry``)."""
    spacing = pixel_spacing_mm(source)
    thickness = source.get("SliceThickness")
    if spacing is None or thickness is None or thickness == "":
        return None
    return hd.PixelMeasuresSequence(pixel_spacing=list(spacing), slice_thickness=float(thickness))


def _projection_pixel_measures(source: Dataset) -> Dataset:
    """The shared Pixel Measures item of a projection image's SEG: its spacing, if any, and nothing else."""
    item = Dataset()
    spacing = pixel_spacing_mm(source)
    if spacing is not None:
        item.PixelSpacing = [format_number_as_ds(v) for v in spacing]
    return item


def _source_reference_item(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def _ensure_references(seg: hd.seg.Segmentation, source: Dataset) -> None:
    """Referenced Series Sequence and a per-frame Derivation Image Sequence pointing at the source."""
    if "ReferencedSeriesSequence" not in seg:
        series = Dataset()
        series.SeriesInstanceUID = source.SeriesInstanceUID
        series.ReferencedInstanceSequence = [_source_reference_item(source)]
        seg.ReferencedSeriesSequence = [series]
    for frame in seg.PerFrameFunctionalGroupsSequence:
        if "DerivationImageSequence" in frame:
            continue
        image = _source_reference_item(source)
        image.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(SOURCE_IMAGE_PURPOSE)]
        image.SpatialLocationsPreserved = "YES"
        derivation = Dataset()
        derivation.SourceImageSequence = [image]
        derivation.DerivationCodeSequence = [hd.sr.CodedConcept.from_code(SEGMENTATION_DERIVATION)]
        frame.DerivationImageSequence = [derivation]


def _complete_2d_geometry(seg: hd.seg.Segmentation, source: Dataset, measures: hd.PixelMeasuresSequence | None) -> None:
    """Patient Orientation, Pixel Measures as decided, and a readable Plane Orientation for a source
    without a Frame of Reference."""
    if "PatientOrientation" not in seg:
        seg.PatientOrientation = source.get("PatientOrientation", "") or ""
    shared = seg.SharedFunctionalGroupsSequence[0]
    if measures is None:  # replaces highdicom's own, if any (see the module docstring)
        shared.PixelMeasuresSequence = [_projection_pixel_measures(source)]
    if "FrameOfReferenceUID" in source:
        return
    if "PlaneOrientationSequence" not in shared:
        shared.PlaneOrientationSequence = hd.PlaneOrientationSequence(
            coordinate_system=hd.CoordinateSystemNames.PATIENT, image_orientation=DEFAULT_2D_ORIENTATION
        )


def build_segmentation(
    source: Dataset,
    labels: np.ndarray,
    card: ModelCard,
    *,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    manufacturer: str,
    series_description: str,
    content_description: str,
    software_versions: str | Sequence[str],
    content_qualification: str | None = None,
    levels: np.ndarray | None = None,
) -> hd.seg.Segmentation:
    """The SEG of ``labels`` (uint8, SpineClass values, the source's rows and columns): BINARY, or a
    FRACTIONAL occupancy of 0 and 1 where BINARY would need a pad byte (``segmentation_type``). With
    ``levels`` (level labels of the same shape), also a segment per vertebra found."""
    rows, cols = int(source.Rows), int(source.Columns)
    if labels.shape != (rows, cols):
        raise ValueError(f"labels of shape {labels.shape} do not match the source image ({rows}, {cols})")
    measures = pixel_measures_for(source)
    vertebrae = vertebra_segments(levels)
    kind = segmentation_type(rows, cols, len(SEGMENTS) + len(vertebrae))
    planes = segment_array(labels, levels, vertebrae)
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=planes,  # boolean either way: highdicom writes a FRACTIONAL occupancy of 0 and the maximum
        segmentation_type=kind,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.OCCUPANCY,
        segment_descriptions=segment_descriptions(card, source.SOPInstanceUID, vertebrae),
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=INSTANCE_NUMBER,
        manufacturer=manufacturer,
        manufacturer_model_name=card.display_name or card.name,
        software_versions=software_versions if isinstance(software_versions, str) else tuple(software_versions),  # type: ignore[arg-type]  # highdicom accepts any number of versions
        device_serial_number=card.version,
        content_label=CONTENT_LABEL,
        content_description=content_description,
        pixel_measures=measures,
        omit_empty_frames=False,
        series_description=series_description,
        content_qualification=content_qualification,
    )
    _complete_2d_geometry(seg, source, measures)
    body_part = str(source.get("BodyPartExamined", "") or "")
    if body_part:
        seg.BodyPartExamined = body_part
    _ensure_references(seg, source)
    return seg


__all__ = [
    "SEGMENTS",
    "SPINE_SEGMENT",
    "T1_SEGMENT",
    "SegmentSpec",
    "VertebraSegment",
    "algorithm_identification",
    "build_segmentation",
    "pixel_measures_for",
    "segment_array",
    "segment_descriptions",
    "segmentation_type",
    "vertebra_segments",
]

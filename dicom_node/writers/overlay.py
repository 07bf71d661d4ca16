"""The overlay: an RGB Secondary Capture of the source as displayed, with the segmentation burned in.

Class V is tinted green and T1 red (``inference.classes.CLASS_COLOURS``), semi-transparent and outlined;
the endplate lines of each reported Cobb angle's end vertebrae are drawn in yellow. A legend names the
model and gives each class's area, coverage, mean probability and flip agreement, and the reported Cobb
angles, their end vertebrae and the T1 tilt; it sits against the left or right edge, above the warning
band, where it hides the least of the segmented column and none of the endplate lines it can avoid (on a
full-spine film the top left corner would cover C7/T1). "NOT FOR DIAGNOSTIC USE" is burned in across the
bottom. A prediction whose quality flag says it is not reliable is not drawn:
the overlay says "NO RELIABLE SEGMENTATION" and why. The SC has the source's rows and columns, says
BurnedInAnnotation YES and references its source (Source Image Sequence, Derivation Description).

All pixel work is vectorised (a colour lookup, one blend and masked copies), so a 2500 x 1300 image
costs milliseconds; text and outlines are drawn with OpenCV.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_node.writers.anatomy import copy_anatomy
from inference.analysis.measure import Measurements
from inference.classes import CLASS_COLOURS, FOREGROUND, SpineClass
from inference.model_card import ModelCard
from inference.prediction import ClassStats, Prediction
from inference.preprocess import from_dataset

ALPHA = 0.4  # weight of the class colour in the tint
OUTLINE_PX_PER_1000 = 2.0  # outline thickness per 1000 pixels of the shorter side
FONT = cv2.FONT_HERSHEY_SIMPLEX
TEXT_COLOUR = (255, 255, 255)
WARNING_COLOUR = (255, 215, 0)
LEGEND_WIDTH_FRACTION = 0.94  # the longest legend line fills at most this much of the width
MAX_FONT_SCALE_PER_1000 = 1.2  # font scale per 1000 pixels of the longer side, before fitting the width
MIN_FONT_SCALE = 0.3
LINE_SPACING = 1.5
STROKE_PER_SCALE = 1.6  # text stroke thickness per unit of font scale
MEASUREMENT_COLOUR = (255, 215, 0)  # Cobb endplate lines and the angles in the legend: yellow
ENDPLATE_EXTENSION = 0.6  # an endplate line is drawn this fraction of its length beyond each end
BACKDROP_DIM = 0.35  # brightness kept under the legend's backdrop
LINE_WEIGHT = 1000.0  # placing the legend: one pixel of a Cobb endplate line counts as this many of the column
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSTIC USE"
NO_RELIABLE_SEGMENTATION = "NO RELIABLE SEGMENTATION"
SOURCE_IMAGE_PURPOSE = codes.DCM.SourceImageForImageProcessingOperation
INSTANCE_NUMBER = 1
# highdicom's SC constructor insists on a patient orientation; used only while building when the
# source has none, and replaced by an empty (type 2) Patient Orientation afterwards.
_PLACEHOLDER_ORIENTATION = ("L", "F")
Lines = Sequence[tuple[str, tuple[int, int, int]]]  # text lines and their colours


def display_rgb(source: Dataset, display_image: np.ndarray | None = None) -> np.ndarray:
    """The source as displayed, as (rows, columns, 3) uint8 RGB.

    ``display_image`` may be grey uint8, grey float in [0, 1] or RGB uint8; without it the image is
    prepared from the dataset (modality LUT, VOI window, inversion) by ``inference.preprocess``.
    """
    if display_image is None:
        display_image = from_dataset(source).image
    image = np.asarray(display_image)
    if image.dtype != np.uint8:
        image = (np.clip(image.astype(np.float32, copy=False), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim == 3 and image.shape[2] == 3:
        return image.copy()  # the overlay is drawn in place: leave the caller's image alone
    raise ValueError(f"display image of shape {image.shape} is neither grey nor RGB")


def _colour_lut() -> np.ndarray:
    """(256, 1, 3) lookup table from label value to class colour (black for background)."""
    lut = np.zeros((256, 1, 3), np.uint8)
    for cls, colour in CLASS_COLOURS.items():
        lut[int(cls), 0] = colour
    return lut


COLOUR_LUT = _colour_lut()


def colour_labels(labels: np.ndarray) -> np.ndarray:
    """Each pixel's class colour, as (rows, columns, 3) uint8 RGB (black for background)."""
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    return cv2.LUT(cv2.merge((labels, labels, labels)), COLOUR_LUT)


def tint(rgb: np.ndarray, labels: np.ndarray, alpha: float = ALPHA) -> None:
    """Blend the class colours into ``rgb`` (in place) where ``labels`` has a foreground class."""
    colours = colour_labels(labels)
    blended = cv2.addWeighted(rgb, 1.0 - alpha, colours, alpha, 0.0)
    cv2.copyTo(blended, (labels != SpineClass.F).view(np.uint8), rgb)


def outline(rgb: np.ndarray, labels: np.ndarray) -> None:
    """Outline each foreground class in its colour (in place)."""
    thickness = max(1, round(min(labels.shape) * OUTLINE_PX_PER_1000 / 1000))
    for cls in FOREGROUND:
        mask = (labels == cls).view(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if contours:
            cv2.drawContours(rgb, contours, -1, CLASS_COLOURS[cls], thickness, cv2.LINE_8)


def endplate_lines(measurements: Measurements | None) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The drawn endplate lines (start, end) of every Cobb angle's end vertebrae, extended beyond the vertebra."""
    if measurements is None:
        return []
    lines = []
    for curve in measurements.cobb:
        for (x0, y0), (x1, y1) in curve.endplates:
            dx, dy = (x1 - x0) * ENDPLATE_EXTENSION, (y1 - y0) * ENDPLATE_EXTENSION
            lines.append(((round(x0 - dx), round(y0 - dy)), (round(x1 + dx), round(y1 + dy))))
    return lines


def _line_thickness(shape: tuple[int, ...]) -> int:
    return max(1, round(min(shape[:2]) * OUTLINE_PX_PER_1000 / 1000))


def draw_endplates(rgb: np.ndarray, measurements: Measurements | None) -> None:
    """The end vertebrae's endplate lines of every Cobb angle (in place)."""
    thickness = _line_thickness(rgb.shape)
    for start, end in endplate_lines(measurements):
        cv2.line(rgb, start, end, MEASUREMENT_COLOUR, thickness, cv2.LINE_AA)


def measurement_lines(measurements: Measurements | None) -> list[str]:
    """Legend lines of the Cobb angles (challenge's order, with end vertebrae) and the T1 tilt."""
    if measurements is None:
        return []
    lines = [
        f"Cobb {i + 1}: {c.angle_deg:.1f} deg, " + (f"{c.upper}-{c.lower}" if c.is_curve else "no curve")
        for i, c in enumerate(measurements.cobb)
    ]
    if measurements.t1_tilt_deg is not None:
        lines.append(f"T1 tilt: {measurements.t1_tilt_deg:+.1f} deg (+: rising to the image right)")
    return lines


def _figure(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def class_lines(name: str, stats: ClassStats) -> list[str]:
    """Two legend lines for one class: size, then probability and flip agreement."""
    area = f"{stats.area:.0f} mm2" if stats.area_unit == "mm2" else f"{stats.area:.0f} px"
    return [
        f"{name}: {area}, {stats.coverage_percent:.1f}% of image",
        f"  mean prob {_figure(stats.mean_confidence, '.2f')}, flip agreement"
        f" Dice {_figure(stats.flip_dice, '.2f')} / Jaccard {_figure(stats.flip_jaccard, '.2f')}",
    ]


def legend_lines(prediction: Prediction, card: ModelCard) -> list[tuple[str, tuple[int, int, int]]]:
    """The legend: model, then each class in its colour, then the demo warning."""
    lines: list[tuple[str, tuple[int, int, int]]] = [
        (card.display_name or card.name, TEXT_COLOUR),
        (f"model {card.name} {card.version}", TEXT_COLOUR),
    ]
    for cls in FOREGROUND:
        stats = prediction.classes.get(cls.name)
        if stats is not None:
            lines.extend((text, CLASS_COLOURS[cls]) for text in class_lines(cls.name, stats))
    lines.extend((text, MEASUREMENT_COLOUR) for text in measurement_lines(prediction.measurements))
    lines.append((NOT_FOR_DIAGNOSIS, WARNING_COLOUR))
    return lines


def _font_scale(texts: Sequence[str], width: int, height: int, room: float | None = None) -> float:
    """Font scale for ``texts``: the longest fills at most ``LEGEND_WIDTH_FRACTION`` of ``room`` pixels
    (default: the image width), capped by the image size and never below ``MIN_FONT_SCALE``."""
    widest = max(cv2.getTextSize(t, FONT, 1.0, 1)[0][0] for t in texts)
    fit = LEGEND_WIDTH_FRACTION * (width if room is None else room) / max(widest, 1)
    cap = MAX_FONT_SCALE_PER_1000 * max(width, height) / 1000
    return max(MIN_FONT_SCALE, min(fit, cap))


@dataclass(frozen=True)
class TextLayout:
    """How a block of text lines is drawn: font scale, stroke, line height, margin and the block's size."""

    scale: float
    thickness: int
    line_h: int
    margin: int
    width: int
    height: int


def text_layout(lines: Lines, scale: float) -> TextLayout:
    thickness = max(1, round(scale * STROKE_PER_SCALE))
    line_h = int(cv2.getTextSize("Ag", FONT, scale, thickness)[0][1] * LINE_SPACING) + 2
    margin = max(2, line_h // 3)
    widest = max(cv2.getTextSize(t, FONT, scale, thickness)[0][0] for t, _ in lines)
    return TextLayout(scale, thickness, line_h, margin, widest + 2 * margin, margin * 2 + line_h * len(lines))


def _text_block(rgb: np.ndarray, lines: Lines, layout: TextLayout, left: int, top: int) -> None:
    """Draw ``lines`` on a dimmed backdrop whose top left corner is (``left``, ``top``)."""
    rows, cols = rgb.shape[:2]
    backdrop = rgb[top : min(rows, top + layout.height), left : min(cols, left + layout.width)]
    np.multiply(backdrop, BACKDROP_DIM, out=backdrop, casting="unsafe")
    y = top + layout.margin
    for text, colour in lines:
        y += layout.line_h
        origin = (left + layout.margin, y - layout.line_h // 4)
        cv2.putText(rgb, text, origin, FONT, layout.scale, colour, layout.thickness, cv2.LINE_AA)


def free_side_width(labels: np.ndarray) -> int:
    """Width of the wider image band left or right of the segmented column (the whole width if none)."""
    columns = np.flatnonzero((labels != SpineClass.F).any(axis=0))
    cols = labels.shape[1]
    if columns.size == 0:
        return cols
    return max(int(columns[0]), cols - 1 - int(columns[-1]))


def covered_weight(labels: np.ndarray, measurements: Measurements | None) -> np.ndarray:
    """What a legend placed over each pixel would hide: 1 on the segmented column, ``LINE_WEIGHT`` on a
    Cobb endplate line (a measurement must never be hidden), 0 elsewhere."""
    weight = (labels != SpineClass.F).astype(np.float32)
    lines = np.zeros(labels.shape, np.uint8)
    for start, end in endplate_lines(measurements):
        cv2.line(lines, start, end, 1, _line_thickness(labels.shape), cv2.LINE_8)
    weight[lines > 0] = LINE_WEIGHT
    return weight


def legend_place(weight: np.ndarray, width: int, height: int, bottom: int) -> tuple[int, int]:
    """(left, top) of the ``width`` x ``height`` legend against the left or the right edge, above row
    ``bottom`` (the warning band), where it hides the least ``weight`` (``covered_weight``): the image's
    corners and every half legend height between them, top left first among equals."""
    rows, cols = weight.shape
    width, height = min(width, cols), min(height, bottom, rows)
    step = max(1, height // 2)
    tops = sorted({*range(0, bottom - height + 1, step), max(0, bottom - height)})
    summed = cv2.integral(weight, sdepth=cv2.CV_64F)  # (rows + 1, cols + 1): O(1) per window
    best, place = np.inf, (0, 0)
    for top in tops:
        for left in (0, cols - width):
            hidden = (
                summed[top + height, left + width]
                - summed[top, left + width]
                - summed[top + height, left]
                + summed[top, left]
            )
            if hidden < best:
                best, place = hidden, (left, top)
    return place


_WARNING_LINES = ((NOT_FOR_DIAGNOSIS, WARNING_COLOUR),)


def _warning_layout(shape: tuple[int, ...]) -> TextLayout:
    rows, cols = shape[:2]
    return text_layout(_WARNING_LINES, _font_scale([NOT_FOR_DIAGNOSIS], cols, rows))


def warning_band_top(shape: tuple[int, ...]) -> int:
    """The first row of the "NOT FOR DIAGNOSTIC USE" band across the bottom of an image of ``shape``."""
    return max(0, shape[0] - _warning_layout(shape).height)


def _warning_band(rgb: np.ndarray) -> None:
    """ "NOT FOR DIAGNOSTIC USE" across the bottom of the image."""
    _text_block(rgb, _WARNING_LINES, _warning_layout(rgb.shape), 0, warning_band_top(rgb.shape))


def legend_box(labels: np.ndarray, prediction: Prediction, card: ModelCard) -> tuple[Lines, TextLayout, int, int]:
    """The legend's lines, layout and (left, top): sized to the band beside the column when that band is wide enough
    to read it, above the warning band, where it hides the least of the column and none of the Cobb lines
    it can avoid."""
    rows, cols = labels.shape
    lines = legend_lines(prediction, card)
    layout = text_layout(lines, _font_scale([t for t, _ in lines], cols, rows, room=free_side_width(labels)))
    weight = covered_weight(labels, prediction.measurements)
    left, top = legend_place(weight, layout.width, layout.height, max(1, warning_band_top(labels.shape)))
    return lines, layout, left, top


def draw_legend(rgb: np.ndarray, labels: np.ndarray, prediction: Prediction, card: ModelCard) -> None:
    """The legend (``legend_box``) and the warning across the bottom (in place)."""
    lines, layout, left, top = legend_box(labels, prediction, card)
    _text_block(rgb, lines, layout, left, top)
    _warning_band(rgb)


def unreliable_lines(prediction: Prediction, card: ModelCard) -> list[tuple[str, tuple[int, int, int]]]:
    """What the overlay of an unreliable prediction says instead of drawing its mask."""
    return [
        (NO_RELIABLE_SEGMENTATION, WARNING_COLOUR),
        *((f"- {reason}", TEXT_COLOUR) for reason in prediction.quality.reasons),
        (f"model {card.name} {card.version}", TEXT_COLOUR),
    ]


def draw_unreliable(rgb: np.ndarray, prediction: Prediction, card: ModelCard) -> None:
    """ "NO RELIABLE SEGMENTATION" and the reasons at the top, the warning across the bottom (in place)."""
    rows, cols = rgb.shape[:2]
    lines = unreliable_lines(prediction, card)
    _text_block(rgb, lines, text_layout(lines, _font_scale([t for t, _ in lines], cols, rows)), 0, 0)
    _warning_band(rgb)


def render_overlay(labels: np.ndarray, prediction: Prediction, card: ModelCard, rgb: np.ndarray) -> np.ndarray:
    """Tint, outline and annotate ``rgb`` (the displayed source, modified in place); return it. An
    unreliable prediction's mask is not drawn: the image says that no reliable segmentation was obtained."""
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    if rgb.shape[:2] != labels.shape:
        raise ValueError(f"display image {rgb.shape[:2]} and labels {labels.shape} differ in size")
    if not prediction.quality.reliable:
        draw_unreliable(rgb, prediction, card)
        return rgb
    tint(rgb, labels)
    outline(rgb, labels)
    draw_endplates(rgb, prediction.measurements)
    draw_legend(rgb, labels, prediction, card)
    return rgb


def _source_image_item(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(SOURCE_IMAGE_PURPOSE)]
    return item


def build_overlay(
    source: Dataset,
    prediction: Prediction,
    card: ModelCard,
    *,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    manufacturer: str,
    series_description: str,
    software_versions: str | Sequence[str],
    display_image: np.ndarray | None = None,
) -> hd.sc.SCImage:
    """The overlay Secondary Capture of ``prediction`` on ``source``."""
    rows, cols = int(source.Rows), int(source.Columns)
    if prediction.labels.shape != (rows, cols):
        raise ValueError(f"labels of shape {prediction.labels.shape} do not match the source ({rows}, {cols})")
    pixels = render_overlay(prediction.labels, prediction, card, display_rgb(source, display_image))
    orientation = source.get("PatientOrientation")
    has_orientation = orientation is not None and len(orientation) == 2
    pixel_spacing = source.get("PixelSpacing")
    sc = hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        study_instance_uid=source.StudyInstanceUID,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=INSTANCE_NUMBER,
        manufacturer=manufacturer,
        patient_id=source.get("PatientID"),
        patient_name=source.get("PatientName"),
        patient_birth_date=source.get("PatientBirthDate"),
        patient_sex=source.get("PatientSex"),
        accession_number=source.get("AccessionNumber"),
        study_id=source.get("StudyID"),
        study_date=source.get("StudyDate"),
        study_time=source.get("StudyTime"),
        referring_physician_name=source.get("ReferringPhysicianName"),
        pixel_spacing=(float(pixel_spacing[0]), float(pixel_spacing[1])) if pixel_spacing else None,
        patient_orientation=tuple(orientation) if has_orientation else _PLACEHOLDER_ORIENTATION,
        series_description=series_description,
        manufacturer_model_name=card.display_name or card.name,
        software_versions=software_versions if isinstance(software_versions, str) else tuple(software_versions),
        device_serial_number=card.version,
        specific_character_set=source.get("SpecificCharacterSet"),
    )
    if not has_orientation:
        sc.PatientOrientation = ""  # type: ignore[assignment]  # an empty type 2 value
    sc.BurnedInAnnotation = "YES"
    sc.SourceImageSequence = [_source_image_item(source)]
    sc.DerivationDescription = (
        f"Segmentation by {card.name} {card.version} burned into the displayed source: "
        f"V green, T1 red; {NOT_FOR_DIAGNOSIS}"
    )
    copy_anatomy(sc, source)
    return sc


__all__ = [
    "NOT_FOR_DIAGNOSIS",
    "NO_RELIABLE_SEGMENTATION",
    "build_overlay",
    "covered_weight",
    "endplate_lines",
    "legend_box",
    "legend_place",
    "colour_labels",
    "display_rgb",
    "legend_lines",
    "render_overlay",
    "warning_band_top",
]

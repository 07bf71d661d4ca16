"""The source image's header as the writers may copy it, whatever gaps the source has.

highdicom copies the Patient and Study modules of the source into the SEG and the SR and reads some of
their attributes as required; the overlay copies patient, study and anatomy attributes too. Real
radiographs lack type 2 attributes (no Patient ID, no Study Date), carry type 3 sequences with no items
(an empty Procedure Code Sequence) or values their VR does not allow (an anonymiser's 56-character hash as
Accession Number and as Patient's Birth Date). Copied as they are, these make highdicom fail or the
outputs invalid.

:func:`writable_source` gives the writers a copy without empty top-level sequences and without top-level
values their VR does not allow, that has every type 2 attribute the outputs carry (empty when the source
has none or an invalid one). The pixel description (group 0028), the pixel data and the identifying UIDs
are never touched (the receiver refuses invalid UIDs); the source itself and its file are left alone.

Two repairs real vendors' headers need:

* Text in a character set the source does not declare. Without Specific Character Set only ASCII is
  allowed (PS3.5 6.1.2.3), yet sources carry Latin-1 or UTF-8 names. Such bytes are decoded with a
  configured default character set (``default_character_set``, as Orthanc's ``DefaultEncoding`` does;
  ISO_IR 100 unless configured), and the copy declares ``ISO_IR 192`` (UTF-8) so that every output writes
  them validly. A declared character set, ISO 2022 code extensions included, is decoded as declared; the
  outputs then carry UTF-8 too whenever a text value is not ASCII (UTF-8 encodes whatever was declared).
* Spacings that are not positive finite numbers (a zero Pixel Spacing, one value instead of two): left
  out with a logged reason, never copied. Areas are then given in pixels (``pixel_spacing_mm``
  applies the same rule) and the SR says so by its units.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from pydicom import config
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName, validate_value

from dicom_node.config import DEFAULT_CHARACTER_SET

log = logging.getLogger(__name__)

UTF8 = "ISO_IR 192"  # the outputs' Specific Character Set when any copied text is not ASCII
TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})  # VRs the Specific Character Set governs
PN_DELIMITERS = {0x5E, 0x3D}  # "^" and "=": a person name's component and group separators
TEXT_DELIMITERS = {0x5C}  # "\\": the value separator of multi-valued text
SPACINGS = ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing")
SPACING_VALUES = 2  # row and column spacing

# Type 2 attributes of the Patient and General Study modules that the outputs carry (empty when unknown).
TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
IDENTITY = frozenset({"SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"})
IMAGE_PIXEL_GROUPS = frozenset({0x0028, 0x7FE0})
# Value representations whose values pydicom can check (text, dates, numbers as strings).
CHECKED_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UI", "UR"})


def _invalid_value(elem: DataElement) -> bool:
    if str(elem.VR) not in CHECKED_VRS or elem.keyword in IDENTITY or elem.tag.group in IMAGE_PIXEL_GROUPS:
        return False
    values = elem.value if elem.VM > 1 else [elem.value]
    try:
        for value in values:
            if value is not None and value != "":
                validate_value(str(elem.VR), str(value), config.RAISE)
    except ValueError:
        return True
    return False


def _unusable(elem: DataElement) -> bool:
    """A top-level sequence with no items (a present type 3 sequence needs one), or a value its VR does
    not allow."""
    if elem.VR == "SQ":
        return len(elem.value) == 0
    return _invalid_value(elem)


def usable_spacing(value: object) -> tuple[float, float] | None:
    """A spacing value as (row, column) mm when it is two positive finite numbers, else ``None``."""
    items = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    try:
        values = [float(v) for v in items]  # type: ignore[arg-type]  # anything: what float refuses is caught
    except (TypeError, ValueError):
        return None
    if len(values) != SPACING_VALUES or not all(math.isfinite(v) and v > 0 for v in values):
        return None
    return values[0], values[1]


def pixel_spacing_mm(ds: Dataset) -> tuple[float, float] | None:
    """Pixel Spacing, else Imager Pixel Spacing (row, column, mm): the first that is ``usable_spacing``
    (areas, the SEG's Pixel Measures); ``None`` when neither is."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        spacing = usable_spacing(ds.get(keyword))
        if spacing is not None:
            return spacing
    return None


def _bad_spacing(elem: DataElement) -> bool:
    if elem.keyword not in SPACINGS:
        return False
    if usable_spacing(elem.value) is None:
        log.warning("%s %r is not two positive spacings: not copied into the outputs", elem.keyword, elem.value)
        return True
    return False


def _as_read(value: object) -> bytes:
    """The bytes of a text value as they were in the file: pydicom decodes text of a source without
    Specific Character Set as Latin-1, which gives every byte back unchanged."""
    if isinstance(value, PersonName) and isinstance(value.original_string, bytes):
        return value.original_string
    if isinstance(value, Sequence) and not isinstance(value, str):  # several values
        return b"\\".join(_as_read(v) for v in value)
    return str(value).encode("latin-1", errors="replace")


def _redecoded(source: Dataset, default_character_set: str) -> dict[int, DataElement]:
    """Top-level text elements with non-ASCII bytes of a source that declares no character set,
    decoded with ``default_character_set``."""
    if "SpecificCharacterSet" in source:
        return {}
    encodings = convert_encodings(default_character_set)
    out: dict[int, DataElement] = {}
    for elem in source:
        if str(elem.VR) not in TEXT_VRS:
            continue
        raw = _as_read(elem.value)
        if not raw or raw.isascii():
            continue
        delimiters = PN_DELIMITERS | TEXT_DELIMITERS if elem.VR == "PN" else TEXT_DELIMITERS
        text = decode_bytes(raw, encodings, delimiters)
        values = text.split("\\")
        out[int(elem.tag)] = DataElement(elem.tag, elem.VR, values if len(values) > 1 else text)
    if out:
        log.info(
            "%d text attributes outside ASCII without Specific Character Set: read as %s",
            len(out),
            default_character_set,
        )
    return out


def _has_non_ascii_text(ds: Dataset) -> bool:
    return any(str(elem.VR) in TEXT_VRS and not str(elem.value).isascii() for elem in ds)


def writable_source(source: Dataset, default_character_set: str = DEFAULT_CHARACTER_SET) -> Dataset:
    """``source``, or a shallow copy of it completed for the writers (see the module docstring)."""
    dropped = {int(elem.tag) for elem in source if _unusable(elem) or _bad_spacing(elem)}
    redecoded = _redecoded(source, default_character_set)
    missing = [keyword for keyword in TYPE2_PATIENT_STUDY if keyword not in source]
    utf8 = bool(redecoded) or ("SpecificCharacterSet" in source and _has_non_ascii_text(source))
    if not missing and not dropped and not utf8:
        return source
    completed = Dataset()
    for elem in source:
        if int(elem.tag) not in dropped:
            completed.add(redecoded.get(int(elem.tag), elem))  # shared, not copied: the writers only read it
    if utf8:
        completed.SpecificCharacterSet = UTF8
    if hasattr(source, "file_meta"):
        completed.file_meta = source.file_meta
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in completed:
            setattr(completed, keyword, "")
    return completed


__all__ = [
    "DEFAULT_CHARACTER_SET",
    "TYPE2_PATIENT_STUDY",
    "UTF8",
    "pixel_spacing_mm",
    "usable_spacing",
    "writable_source",
]

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
"""

from __future__ import annotations

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import validate_value

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


def writable_source(source: Dataset) -> Dataset:
    """``source``, or a shallow copy of it completed for the writers (see the module docstring)."""
    dropped = {int(elem.tag) for elem in source if _unusable(elem)}
    missing = [keyword for keyword in TYPE2_PATIENT_STUDY if keyword not in source]
    if not missing and not dropped:
        return source
    completed = Dataset()
    for elem in source:
        if int(elem.tag) not in dropped:
            completed.add(elem)  # shared, not copied: the writers only read the source
    if hasattr(source, "file_meta"):
        completed.file_meta = source.file_meta
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in completed:
            setattr(completed, keyword, "")
    return completed


__all__ = ["TYPE2_PATIENT_STUDY", "writable_source"]

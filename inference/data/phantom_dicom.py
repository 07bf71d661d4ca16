"""The spine phantom as a DICOM Digital X-Ray Image (For Presentation), and a writer for phantom sets.

``phantom_to_dataset`` builds the DX object module by module (PS3.3 A.26.1): one small function fills
each module, so what is in the file can be read against the standard table by table. The result is a
single-frame, uncompressed, Explicit VR Little Endian object that passes ``dciodvfy`` without errors.

All UIDs are name-based UUIDs (``2.25.`` form) of the phantom's seed, so the same seed always gives the
same study, series and instance. The true Cobb angle is recorded in ImageComments.

``write_phantoms`` writes a numbered set of phantoms (DICOM or PNG with a label mask) and a
``phantoms.json`` index.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian
from pydicom.valuerep import DSfloat

from inference.data.phantom import BITS_STORED, Phantom, make_phantom

DX_PRESENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
IMPLEMENTATION_VERSION = "SPINENODE_PH1"
UID_NAMESPACE = "spinenode-phantom"

MANUFACTURER = "SpineNode phantom"
MODEL_NAME = "make_phantom"
SOFTWARE_VERSION = "1"
# A fixed acquisition date and time: phantoms are timeless, and fixed values keep files reproducible.
STUDY_DATE = "20240101"
STUDY_TIME = "120000"
STUDY_DESCRIPTION = "Synthetic AP full-spine radiograph"
SERIES_DESCRIPTION = "Phantom AP spine"
BODY_PART = "SPINE"
VIEW_POSITION = "AP"
# AP projection shown as if facing the patient: columns run to the patient's Left, rows to the Feet.
PATIENT_ORIENTATION = ("L", "F")
# SNOMED CT "Spine" (anatomic region, CID 4031).
SPINE_CODE = ("421060004", "SCT", "Spine")
# SNOMED CT "antero-posterior" (CID 4010 X-Ray Radiographic View).
AP_VIEW_CODE = ("399348003", "SCT", "antero-posterior")
DETECTOR_TYPE = "SCINTILLATOR"
PRESENTATION_LUT = {"MONOCHROME1": "INVERSE", "MONOCHROME2": "IDENTITY"}
# PS3.3 C.8.11.3.1.2: -1 when higher stored values mean less X-ray intensity. MONOCHROME2 phantoms store
# attenuation as brightness (bone high: less intensity), MONOCHROME1 phantoms store its inverse.
INTENSITY_SIGN = {"MONOCHROME1": 1, "MONOCHROME2": -1}
FORMATS = ("dicom", "png")  # "dcm" is accepted as another name for "dicom"
INDEX_FILE = "phantoms.json"


def _name_uid(name: str) -> str:
    """The ``2.25.`` UID of a name-based (RFC 4122 version 5) UUID: the same name, the same UID."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, f'{UID_NAMESPACE}:{name}').int}"


def phantom_uid(seed: int, kind: str) -> str:
    """A deterministic ``2.25.`` UID for one object (``kind``: study, series, instance) of a phantom."""
    return _name_uid(f"{seed}/{kind}")


def _code_item(code: tuple[str, str, str]) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
    return item


def _fmt_ds(value: float) -> DSfloat:
    """A decimal string (VR DS, at most 16 characters) for ``value``, as precise as that allows."""
    return DSfloat(value, auto_format=True)


# --- modules ----------------------------------------------------------------------------------------


def _patient_module(ds: Dataset, patient_id: str, patient_name: str) -> None:
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"


def _general_study_module(ds: Dataset, study_uid: str, seed: int) -> None:
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = STUDY_DATE
    ds.StudyTime = STUDY_TIME
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"PH{seed}"[:16]
    ds.AccessionNumber = f"PH{seed}"[:16]
    ds.StudyDescription = STUDY_DESCRIPTION


def _general_series_module(ds: Dataset, series_uid: str) -> None:
    ds.Modality = "DX"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.SeriesDate = STUDY_DATE
    ds.SeriesTime = STUDY_TIME
    ds.SeriesDescription = SERIES_DESCRIPTION
    ds.BodyPartExamined = BODY_PART


def _dx_series_module(ds: Dataset) -> None:
    ds.PresentationIntentType = "FOR PRESENTATION"


def _general_equipment_module(ds: Dataset) -> None:
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.SoftwareVersions = SOFTWARE_VERSION


def _general_image_module(ds: Dataset, p: Phantom) -> None:
    ds.InstanceNumber = 1
    ds.PatientOrientation = list(PATIENT_ORIENTATION)
    ds.ContentDate = STUDY_DATE
    ds.ContentTime = STUDY_TIME
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BurnedInAnnotation = "NO"
    ds.ImageComments = f"Synthetic phantom seed {p.seed}; true Cobb angle {p.cobb_angle_deg:.2f} deg"


def _general_acquisition_module(ds: Dataset) -> None:
    ds.AcquisitionNumber = 1
    ds.AcquisitionDate = STUDY_DATE
    ds.AcquisitionTime = STUDY_TIME


def _image_pixel_module(ds: Dataset, p: Phantom) -> None:
    rows, cols = p.pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = p.photometric
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(p.pixels, dtype="<u2").tobytes()


def _acquisition_context_module(ds: Dataset) -> None:
    ds.AcquisitionContextSequence = DicomSequence()


def _dx_anatomy_imaged_module(ds: Dataset) -> None:
    ds.ImageLaterality = "U"
    ds.AnatomicRegionSequence = DicomSequence([_code_item(SPINE_CODE)])


def _dx_image_module(ds: Dataset, p: Phantom) -> None:
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = INTENSITY_SIGN[p.photometric]
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = PRESENTATION_LUT[p.photometric]
    ds.LossyImageCompression = "00"


def _voi_lut_module(ds: Dataset, p: Phantom) -> None:
    ds.WindowCenter = _fmt_ds(p.window_center)
    ds.WindowWidth = _fmt_ds(p.window_width)
    ds.WindowCenterWidthExplanation = "Phantom default"
    # No VOI LUT Function: LINEAR is its default (PS3.3 C.11.2.1.2), and OHIF 3.13's image loader
    # rejects an explicit "LINEAR" ("Invalid VOI LUT function") and shows the image black.


def _dx_detector_module(ds: Dataset, p: Phantom) -> None:
    spacing = _fmt_ds(p.pixel_spacing_mm)
    ds.DetectorType = DETECTOR_TYPE
    ds.DetectorConfiguration = "AREA"
    ds.ImagerPixelSpacing = [spacing, spacing]


def _dx_positioning_module(ds: Dataset) -> None:
    ds.ViewPosition = VIEW_POSITION
    ds.PositionerType = ""  # type 2: a synthetic image has no positioner to name
    ds.ViewCodeSequence = DicomSequence([_code_item(AP_VIEW_CODE)])


def _sop_common_module(ds: Dataset, sop_uid: str) -> None:
    ds.SOPClassUID = DX_PRESENTATION_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstanceCreationDate = STUDY_DATE
    ds.InstanceCreationTime = STUDY_TIME


def _file_meta(sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(DX_PRESENTATION_SOP_CLASS)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(_name_uid("implementation"))
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    return meta


def phantom_to_dataset(
    p: Phantom,
    *,
    patient_id: str | None = None,
    patient_name: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> Dataset:
    """The phantom as a DX For Presentation dataset (with file meta, ready for ``dcmwrite``).

    Identifiers default to values derived from the seed: patient ``PHANTOM-<seed>``, name
    ``Phantom^<seed>`` and deterministic study, series and instance UIDs.
    """
    study_uid = study_uid or phantom_uid(p.seed, "study")
    series_uid = series_uid or phantom_uid(p.seed, "series")
    sop_uid = sop_uid or phantom_uid(p.seed, "instance")
    ds = Dataset()
    _sop_common_module(ds, sop_uid)
    _patient_module(ds, patient_id or f"PHANTOM-{p.seed}", patient_name or f"Phantom^{p.seed}")
    _general_study_module(ds, study_uid, p.seed)
    _general_series_module(ds, series_uid)
    _dx_series_module(ds)
    _general_equipment_module(ds)
    _general_image_module(ds, p)
    _general_acquisition_module(ds)
    _image_pixel_module(ds, p)
    _acquisition_context_module(ds)
    _dx_anatomy_imaged_module(ds)
    _dx_image_module(ds, p)
    _voi_lut_module(ds, p)
    _dx_detector_module(ds, p)
    _dx_positioning_module(ds)
    ds.file_meta = _file_meta(sop_uid)
    return ds


# --- phantom sets -----------------------------------------------------------------------------------


def _write_one(p: Phantom, out_dir: Path, fmt: str) -> str:
    stem = f"phantom-{p.seed}"
    if fmt == "dicom":
        name = f"{stem}.dcm"
        phantom_to_dataset(p).save_as(out_dir / name, enforce_file_format=True)
        return name
    name = f"{stem}.png"
    if not cv2.imwrite(str(out_dir / name), p.display_image()):
        raise OSError(f"could not write {out_dir / name}")
    if not cv2.imwrite(str(out_dir / f"{stem}-mask.png"), p.mask):
        raise OSError(f"could not write {out_dir / stem}-mask.png")
    return name


def write_phantoms(
    out_dir: str | Path, n: int, seed: int = 0, fmt: str = "dicom", height: int | None = None
) -> list[dict[str, Any]]:
    """Write phantoms of seeds ``seed .. seed+n-1`` to ``out_dir`` and index them in ``phantoms.json``.

    ``fmt`` ``"dicom"`` (or ``"dcm"``) writes ``phantom-<seed>.dcm``; ``"png"`` writes the displayed image
    ``phantom-<seed>.png`` and its label mask ``phantom-<seed>-mask.png`` (pixel values are the class
    labels 0, 1, 2). Returns the index entries.
    """
    fmt = "dicom" if fmt == "dcm" else fmt
    if fmt not in FORMATS:
        raise ValueError(f"unknown phantom format {fmt!r}: use one of {', '.join(FORMATS)}")
    if n < 1:
        raise ValueError("n must be at least 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index: list[dict[str, Any]] = []
    for s in range(seed, seed + n):
        p = make_phantom(s, height)
        entry: dict[str, Any] = {
            "seed": s,
            "file": _write_one(p, out, fmt),
            "cobb_angle_deg": p.cobb_angle_deg,
            "photometric": p.photometric,
            "pixel_spacing_mm": p.pixel_spacing_mm,
            "rows": int(p.pixels.shape[0]),
            "columns": int(p.pixels.shape[1]),
        }
        if fmt == "png":
            entry["mask"] = f"phantom-{s}-mask.png"
        index.append(entry)
    (out / INDEX_FILE).write_text(json.dumps({"format": fmt, "phantoms": index}, indent=2) + "\n")
    return index


__all__ = ["phantom_to_dataset", "phantom_uid", "write_phantoms"]

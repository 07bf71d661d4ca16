"""The phantom as a DX For Presentation object: valid for dciodvfy, faithful, deterministic; and phantom sets."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian

from inference.data.phantom import BITS_STORED, Phantom, make_phantom, unit_image
from inference.data.phantom_dicom import DX_PRESENTATION_SOP_CLASS, INDEX_FILE, phantom_to_dataset, write_phantoms
from inference.preprocess import from_dataset
from tests.dciodvfy import dciodvfy_errors

HEIGHT = 420  # small phantoms keep the tests cheap
FIRST_SEED = 910000
MAX_SEARCH = 60


@pytest.fixture(scope="module")
def phantoms() -> dict[str, Phantom]:
    """One phantom of each photometric interpretation (found by trying seeds in turn)."""
    found: dict[str, Phantom] = {}
    for seed in range(FIRST_SEED, FIRST_SEED + MAX_SEARCH):
        p = make_phantom(seed, height=HEIGHT)
        found.setdefault(p.photometric, p)
        if len(found) == 2:
            return found
    raise AssertionError(f"no seed in {MAX_SEARCH} tries gives both MONOCHROME1 and MONOCHROME2")


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_phantom_dx_passes_dciodvfy(phantoms: dict[str, Phantom], photometric: str, tmp_path: Path) -> None:
    p = phantoms[photometric]
    path = tmp_path / "dx.dcm"
    phantom_to_dataset(p).save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    ds = dcmread(path)
    assert ds.SOPClassUID == DX_PRESENTATION_SOP_CLASS
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.Modality == "DX" and ds.PresentationIntentType == "FOR PRESENTATION"
    assert ds.PhotometricInterpretation == photometric
    assert ds.PresentationLUTShape == ("INVERSE" if photometric == "MONOCHROME1" else "IDENTITY")
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, BITS_STORED, 11, 0)
    assert ds.BodyPartExamined == "SPINE" and ds.ViewPosition == "AP" and ds.ImageLaterality == "U"
    assert ds.AnatomicRegionSequence[0].CodeValue == "421060004"
    assert list(ds.PatientOrientation) == ["L", "F"]
    assert [float(v) for v in ds.ImagerPixelSpacing] == pytest.approx([p.pixel_spacing_mm] * 2)
    assert float(ds.WindowCenter) == pytest.approx(p.window_center, abs=1e-3)
    assert float(ds.WindowWidth) == pytest.approx(p.window_width, abs=1e-3)
    assert f"{p.cobb_angle_deg:.2f}" in ds.ImageComments
    assert np.array_equal(ds.pixel_array, p.pixels)


def test_uids_and_identifiers_are_deterministic(phantoms: dict[str, Phantom]) -> None:
    p = phantoms["MONOCHROME2"]
    a, b = phantom_to_dataset(p), phantom_to_dataset(p)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert a[keyword].value == b[keyword].value
        assert UID(a[keyword].value).is_valid and str(a[keyword].value).startswith("2.25.")
    assert a.PatientID == f"PHANTOM-{p.seed}" and str(a.PatientName) == f"Phantom^{p.seed}"
    other = phantom_to_dataset(phantoms["MONOCHROME1"])
    assert other.SOPInstanceUID != a.SOPInstanceUID and other.StudyInstanceUID != a.StudyInstanceUID
    custom = phantom_to_dataset(p, patient_id="X1", patient_name="Doe^Jane", study_uid="2.25.42")
    assert (custom.PatientID, str(custom.PatientName), custom.StudyInstanceUID) == ("X1", "Doe^Jane", "2.25.42")


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_dataset_prepares_like_the_phantom(phantoms: dict[str, Phantom], photometric: str) -> None:
    """The DX is displayed as the phantom is: MONOCHROME1 with INVERSE is one inversion, not two."""
    p = phantoms[photometric]
    prepared = from_dataset(phantom_to_dataset(p))
    assert np.allclose(prepared.image, unit_image(p), atol=1e-6)


def test_write_phantoms_dicom(tmp_path: Path) -> None:
    index = write_phantoms(tmp_path, 2, seed=FIRST_SEED, fmt="dicom", height=HEIGHT)
    data = json.loads((tmp_path / INDEX_FILE).read_text())
    assert data["phantoms"] == index
    assert [e["seed"] for e in index] == [FIRST_SEED, FIRST_SEED + 1]
    for entry in index:
        p = make_phantom(entry["seed"], height=HEIGHT)
        assert entry["file"] == f"phantom-{entry['seed']}.dcm"
        assert entry["cobb_angle_deg"] == p.cobb_angle_deg and entry["photometric"] == p.photometric
        ds = dcmread(tmp_path / entry["file"])
        assert np.array_equal(ds.pixel_array, p.pixels)


def test_write_phantoms_png(tmp_path: Path) -> None:
    [entry] = write_phantoms(tmp_path, 1, seed=FIRST_SEED, fmt="png", height=HEIGHT)
    p = make_phantom(FIRST_SEED, height=HEIGHT)
    image = cv2.imread(str(tmp_path / entry["file"]), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(str(tmp_path / entry["mask"]), cv2.IMREAD_UNCHANGED)
    assert entry["file"] == f"phantom-{FIRST_SEED}.png" and entry["mask"] == f"phantom-{FIRST_SEED}-mask.png"
    assert np.array_equal(image, p.display_image())
    assert np.array_equal(mask, p.mask)
    assert json.loads((tmp_path / INDEX_FILE).read_text())["format"] == "png"


def test_write_phantoms_rejects_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format"):
        write_phantoms(tmp_path, 1, fmt="tiff")

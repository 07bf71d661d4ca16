"""Source headers as real vendors send them: undeclared non-ASCII text, declared character sets (ISO 2022
code extensions included) and spacings that are zero, negative or malformed.

Each class of source is built here from a phantom DX, written to a file and read back (so that pydicom
meets the raw bytes as it would from the network), and its SEG, SR and SC must pass dciodvfy, carry the
text as the source meant it and never carry an unusable spacing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_node.writers import build_outputs
from dicom_node.writers.source import UTF8, pixel_spacing_mm, usable_spacing, writable_source
from inference.data.phantom import make_phantom
from inference.data.phantom_dicom import phantom_to_dataset
from tests.dciodvfy import dciodvfy_errors
from tests.dicom_node.outputs import fake_prediction, make_card

SEED = 920002
HEIGHT = 256
LATIN1_NAME = "Müller^Jürgen"
LATIN1_INSTITUTION = "Hôpital Saint-Éloi"
UTF8_NAME = "Øster^Åse"
JAPANESE_NAME = "Yamada^Tarou=山田^太郎=やまだ^たろう"  # PS3.5 H.3.1, ISO 2022 IR 87 with escapes
KINDS = ("seg", "sr", "sc")


def source_file(tmp_path: Path, name: str, edit: dict[str, object], raw_text: dict[int, bytes] | None = None) -> Path:
    """A phantom DX with ``edit`` applied (``None`` deletes) and ``raw_text`` as undecoded bytes."""
    phantom = make_phantom(SEED, height=HEIGHT)
    ds = phantom_to_dataset(phantom)
    for keyword, value in edit.items():
        if value is None:
            ds.pop(keyword, None)
        else:
            setattr(ds, keyword, value)
    path = tmp_path / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    if raw_text:
        # the text bytes as a vendor wrote them: replaced in the file's encoded form, no character set
        data = path.read_bytes()
        for placeholder, raw in raw_text.items():
            marker = f"PLACEHOLDER{placeholder}".encode()
            padded = raw + b" " * (len(raw) % 2)
            assert data.count(marker) == 1
            start = data.index(marker)
            # explicit VR little endian, short form: the 2-byte length precedes the value
            length = int.from_bytes(data[start - 2 : start], "little")
            data = data[: start - 2] + len(padded).to_bytes(2, "little") + padded + data[start + length :]
        path.write_bytes(data)
    return path


def outputs_of(path: Path, tmp_path: Path) -> dict[str, Dataset]:
    source = dcmread(path)
    phantom = make_phantom(SEED, height=HEIGHT)
    card = make_card()
    outputs = build_outputs(
        source, fake_prediction(phantom, card, pixel_spacing_mm(source)), card, display_image=phantom.display_image()
    )
    read = {}
    for kind, ds in outputs.by_kind().items():
        out = tmp_path / f"{path.stem}-{kind}.dcm"
        ds.save_as(out, enforce_file_format=True)
        assert dciodvfy_errors(out) == [], kind
        read[kind] = dcmread(out)
    return read


def test_undeclared_latin1_text_is_decoded_with_the_default_and_written_as_utf8(tmp_path: Path) -> None:
    path = source_file(
        tmp_path,
        "latin1",
        {"SpecificCharacterSet": None, "PatientName": "PLACEHOLDER1", "InstitutionName": "PLACEHOLDER2"},
        {1: LATIN1_NAME.encode("latin-1"), 2: LATIN1_INSTITUTION.encode("latin-1")},
    )
    assert "SpecificCharacterSet" not in dcmread(path)
    for kind, ds in outputs_of(path, tmp_path).items():
        assert ds.SpecificCharacterSet == UTF8, kind
        assert str(ds.PatientName) == LATIN1_NAME, kind
    assert writable_source(dcmread(path)).InstitutionName == LATIN1_INSTITUTION


def test_undeclared_multi_valued_text_keeps_its_values(tmp_path: Path) -> None:
    names = ["Müller^Jürgen", "Mañana^José"]
    path = source_file(
        tmp_path,
        "multi",
        {"SpecificCharacterSet": None, "OtherPatientNames": "PLACEHOLDER1"},
        {1: "\\".join(names).encode("latin-1")},
    )
    completed = writable_source(dcmread(path))
    assert [str(n) for n in completed.OtherPatientNames] == names
    assert completed.SpecificCharacterSet == UTF8


def test_undeclared_utf8_text_with_a_utf8_default(tmp_path: Path) -> None:
    path = source_file(
        tmp_path, "utf8", {"SpecificCharacterSet": None, "PatientName": "PLACEHOLDER1"}, {1: UTF8_NAME.encode()}
    )
    assert str(writable_source(dcmread(path), default_character_set=UTF8).PatientName) == UTF8_NAME
    phantom = make_phantom(SEED, height=HEIGHT)
    card = make_card()
    outputs = build_outputs(
        dcmread(path), fake_prediction(phantom, card, None), card, default_character_set=UTF8
    )  # as the node passes [node] default_character_set
    assert {str(ds.PatientName) for ds in outputs.datasets()} == {UTF8_NAME}
    # with the Latin-1 default the same bytes are read as Latin-1: wrong letters, but valid outputs
    assert str(writable_source(dcmread(path)).PatientName) == UTF8_NAME.encode().decode("latin-1")


def test_declared_iso2022_japanese_is_carried(tmp_path: Path) -> None:
    path = source_file(
        tmp_path, "japanese", {"SpecificCharacterSet": ["", "ISO 2022 IR 87"], "PatientName": JAPANESE_NAME}
    )
    assert b"\x1b$B" in path.read_bytes()  # the source really holds ISO 2022 escape sequences
    for kind, ds in outputs_of(path, tmp_path).items():
        assert ds.SpecificCharacterSet == UTF8, kind
        assert str(ds.PatientName) == JAPANESE_NAME, kind


def test_ascii_source_keeps_its_character_set(tmp_path: Path) -> None:
    path = source_file(tmp_path, "ascii", {"SpecificCharacterSet": None, "PatientName": "Doe^John"})
    for kind, ds in outputs_of(path, tmp_path).items():
        assert "SpecificCharacterSet" not in ds, kind


@pytest.mark.parametrize(
    "spacing",
    [["0", "0"], ["0.2", "0"], ["-0.2", "-0.2"], ["0.2"], ["nan", "0.2"]],
    ids=["zero", "one-zero", "negative", "one-value", "nan"],
)
def test_unusable_spacing_is_never_copied(tmp_path: Path, spacing: list[str]) -> None:
    path = source_file(tmp_path, "spacing", {"PixelSpacing": spacing, "ImagerPixelSpacing": spacing})
    source = dcmread(path)
    assert pixel_spacing_mm(source) is None  # areas in pixels
    outputs = outputs_of(path, tmp_path)
    for kind, ds in outputs.items():
        assert "PixelSpacing" not in ds and "ImagerPixelSpacing" not in ds, kind
        shared = ds.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
        assert "PixelSpacing" not in shared.get("PixelMeasuresSequence", [Dataset()])[0], kind
    units = {item.MeasurementUnitsCodeSequence[0].CodeValue for item in _numeric_items(outputs["sr"])}
    assert "mm2" not in units and "{pixels}" in units


def test_usable_spacing() -> None:
    assert usable_spacing(["0.15", "0.2"]) == (0.15, 0.2)
    for bad in (["0", "0.2"], ["0.2"], ["x", "0.2"], None, ["inf", "0.2"]):
        assert usable_spacing(bad) is None, bad


def _numeric_items(ds: Dataset) -> list[Dataset]:
    found, stack = [], list(ds.ContentSequence)
    while stack:
        item = stack.pop()
        if item.ValueType == "NUM":
            found.append(item.MeasuredValueSequence[0])
        stack.extend(item.get("ContentSequence", []))
    return found

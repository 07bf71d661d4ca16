"""Outputs stay valid whatever the source header lacks or gets wrong (gaps found in the real corpus).

A phantom DX is given the header problems of real files: no Patient ID or Study Date, an empty Procedure
Code Sequence, an anonymiser's hash as Accession Number and Birth Date, a non-standard body part
("THORAX") with an empty Laterality, a spine body part with a Laterality it must not have.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicom_node.reference.compare import compare
from dicom_node.writers import build_outputs
from dicom_node.writers.anatomy import UNPAIRED_BODY_PARTS
from dicom_node.writers.evaluation_sr import build_evaluation_report
from dicom_node.writers.source import TYPE2_PATIENT_STUDY, writable_source
from inference.data.phantom import make_phantom
from inference.data.phantom_dicom import phantom_to_dataset
from tests.dciodvfy import dciodvfy_errors
from tests.dicom_node.outputs import fake_prediction, make_card

SEED = 920001
HEIGHT = 256
ANONYMISER_HASH = "d14a028c2a3a2bc9476102bb288234c415a2b01f828ea62ac5b3e42f"


def gappy_source(body_part: str, laterality: str | None) -> Dataset:
    ds = phantom_to_dataset(make_phantom(SEED, height=HEIGHT))
    del ds.PatientID, ds.StudyDate
    ds.ProcedureCodeSequence = []
    ds.AccessionNumber = ANONYMISER_HASH
    ds.PatientBirthDate = ANONYMISER_HASH
    ds.BodyPartExamined = body_part
    if laterality is None:
        ds.pop("Laterality", None)
    else:
        ds.Laterality = laterality
    return ds


def test_writable_source_fills_and_drops_without_touching_the_source() -> None:
    source = gappy_source("THORAX", "")
    completed = writable_source(source)
    assert completed is not source
    assert all(keyword in completed for keyword in TYPE2_PATIENT_STUDY)
    assert completed.AccessionNumber == "" and completed.PatientBirthDate == ""
    assert "ProcedureCodeSequence" not in completed
    assert completed.SOPInstanceUID == source.SOPInstanceUID
    assert "PatientID" not in source and source.AccessionNumber == ANONYMISER_HASH  # the source is left alone


@pytest.mark.parametrize(
    ("body_part", "laterality", "sc_laterality"),
    [("THORAX", "", ""), ("SPINE", "L", None), ("HAND", None, ""), ("HAND", "R", "R")],
)
def test_outputs_of_a_gappy_source_pass_dciodvfy(
    tmp_path: Path, body_part: str, laterality: str | None, sc_laterality: str | None
) -> None:
    source = gappy_source(body_part, laterality)
    card = make_card()
    phantom = make_phantom(SEED, height=HEIGHT)
    outputs = build_outputs(source, fake_prediction(phantom, card, None), card, display_image=phantom.display_image())
    assert (body_part in UNPAIRED_BODY_PARTS) == (sc_laterality is None)
    assert outputs.sc.get("Laterality") == sc_laterality
    # the evaluation SR of the same source (our SEG compared with itself as the reference)
    comparisons = compare(outputs.seg, outputs.seg, str(source.SOPInstanceUID))
    evaluation = build_evaluation_report(source, outputs.seg, outputs.seg, comparisons, card)
    assert evaluation.PatientID == "" and evaluation.StudyDate == ""  # completed, not copied as missing
    for name, ds in (("seg", outputs.seg), ("sr", outputs.sr), ("sc", outputs.sc), ("eval_sr", evaluation)):
        path = tmp_path / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], name

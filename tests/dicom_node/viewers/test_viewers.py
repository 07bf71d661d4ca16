"""Our SEG and SR read by the viewers' own code.

OHIF reads a SEG with cornerstone3D's adapters (``@cornerstonejs/adapters``: SEG -> labelmap images in
cornerstone's cache) and walks a TID 1500 SR with the adapters' measurement-report code on top of dcmjs.
``tests/viewers/read_outputs.mjs`` runs exactly that in Node.js on a phantom DX and the SEG and SR built
from its true labels; this module installs the pinned npm packages (``npm ci``, from
``tests/viewers/package-lock.json``) when needed and checks what the readers got: the two segments on the
right pixels, and the SR's two measurement groups with their regions on the source image, the SEG
segments' Tracking UIDs and their figures.

Weasis matches SEG frames to images through DerivationImageSequence -> SourceImageSequence ->
ReferencedSOPInstanceUID; that is checked on every frame.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread

from dicom_node.writers import build_outputs
from inference.classes import SpineClass
from inference.data.phantom import make_phantom
from inference.data.phantom_dicom import phantom_to_dataset
from tests.conftest import PROJECT, npm_ci, require_tool
from tests.dicom_node.outputs import fake_prediction, make_card

pytestmark = pytest.mark.slow  # OHIF's readers in Node.js

VIEWERS = PROJECT / "tests" / "viewers"
READER = VIEWERS / "read_outputs.mjs"
NPM_TIMEOUT_S = 600
READER_TIMEOUT_S = 120
SEED = 920003
HEIGHT = 320
SEGMENT_LABELS = {1: "Spine", 2: "T1 vertebra"}
SEGMENT_CLASSES = {1: (SpineClass.V, SpineClass.T1), 2: (SpineClass.T1,)}
AREA = "Area"


@dataclass
class ReaderRun:
    labels: np.ndarray  # the true labels the SEG and SR were built from
    spacing_mm: float
    seg_uid: str
    source_uid: str
    seg_path: Path
    result: dict[str, Any]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> ReaderRun:
    node = require_tool("node")
    npm_ci(VIEWERS, timeout=NPM_TIMEOUT_S)
    folder = tmp_path_factory.mktemp("viewers")
    phantom = make_phantom(SEED, height=HEIGHT)
    card = make_card()
    source = phantom_to_dataset(phantom)
    spacing = (phantom.pixel_spacing_mm, phantom.pixel_spacing_mm)
    prediction = fake_prediction(phantom, card, spacing)
    outputs = build_outputs(source, prediction, card, display_image=phantom.display_image())
    paths = {name: folder / f"{name}.dcm" for name in ("source", "seg", "sr")}
    for name, ds in (("source", source), ("seg", outputs.seg), ("sr", outputs.sr)):
        ds.save_as(paths[name], enforce_file_format=True)
    proc = subprocess.run(
        [node, str(READER), str(paths["source"]), str(paths["seg"]), str(paths["sr"]), str(folder)],
        capture_output=True,
        text=True,
        timeout=READER_TIMEOUT_S,
        cwd=VIEWERS,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return ReaderRun(
        phantom.mask,
        phantom.pixel_spacing_mm,
        str(outputs.seg.SOPInstanceUID),
        str(source.SOPInstanceUID),
        paths["seg"],
        result,
    )


def test_cornerstone_reads_the_two_segments(run: ReaderRun) -> None:
    assert {s["number"]: s["label"] for s in run.result["segments"]} == SEGMENT_LABELS


def test_cornerstone_labelmap_has_the_segments_on_the_right_pixels(run: ReaderRun) -> None:
    rows, cols = run.labels.shape
    found = {number: np.zeros((rows, cols), bool) for number in SEGMENT_LABELS}
    for layer in run.result["layers"]:
        assert (layer["rows"], layer["columns"]) == (rows, cols)
        data = np.fromfile(layer["file"], np.uint8).reshape(rows, cols)
        assert set(np.unique(data)) <= {0, *SEGMENT_LABELS}
        for number in SEGMENT_LABELS:
            found[number] |= data == number
    for number, classes in SEGMENT_CLASSES.items():
        expected = np.isin(run.labels, classes)
        assert expected.any()
        assert np.array_equal(found[number], expected), SEGMENT_LABELS[number]
    assert run.result["overlapping"]  # T1 lies inside the spine: cornerstone keeps it in its own layer


def test_adapters_parse_the_sr_measurement_groups(run: ReaderRun) -> None:
    groups = {g["trackingIdentifier"]: g for g in run.result["measurementGroups"]}
    assert set(groups) == set(SEGMENT_LABELS.values())
    seg_tracking = {str(s.SegmentLabel): str(s.TrackingUID) for s in dcmread(run.seg_path).SegmentSequence}
    pixel_area = run.spacing_mm**2
    for number, label in SEGMENT_LABELS.items():
        group = groups[label]
        assert group["trackingUID"] == seg_tracking[label]  # ties the group to the SEG segment
        region = group["region"]
        assert region["graphicType"] == "POLYLINE" and region["points"] >= 4
        assert region["sopInstanceUID"] == run.source_uid
        measurements = {m["name"]: m for m in group["measurements"]}
        pixels = int(np.isin(run.labels, SEGMENT_CLASSES[number]).sum())
        assert measurements[AREA]["unit"] == "mm2"
        assert measurements[AREA]["value"] == pytest.approx(pixels * pixel_area, rel=1e-6)


def test_every_seg_frame_derives_from_the_source(run: ReaderRun) -> None:
    """Weasis' match of SEG frames to the image."""
    seg = dcmread(run.seg_path)
    assert len(seg.PerFrameFunctionalGroupsSequence) == int(seg.NumberOfFrames) == len(SEGMENT_LABELS)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        [derivation] = frame.DerivationImageSequence
        [image] = derivation.SourceImageSequence
        assert image.ReferencedSOPInstanceUID == run.source_uid

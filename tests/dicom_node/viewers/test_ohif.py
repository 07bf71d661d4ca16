"""What a reader sees in the real OHIF Viewer 3.13: the node's outputs, from a real Orthanc over DICOMweb.

Phantom DX images of several sizes are written with the node's writers (SEG, SR and SC of the phantom's
true labels, so that where the segments must appear is known), stored into Orthanc (DICOMweb plugin)
with dcmtk's ``storescu``, and opened in OHIF's prebuilt ``dist/`` (``tests/ohif.py``: cached
``npm pack``, same-origin server) by ``tests/browser/ohif.mjs`` in Debian's headless Chromium. The
sizes cover an even width with byte-aligned SEG frames, an odd width, an odd width whose 1-bit SEG pixel
data has an odd byte count (OHIF's reader rejects such a file), a 2500-row film, and a prediction whose
quality flag says it is not reliable (no SEG; SR and SC only).

Checked for each: the source is displayed, the SEG loads with its two segments and draws them (green
column, red T1 at its top), the SR opens without an error and OHIF lists and places its measurements
on the source image, the SC is displayed, and nothing is logged as an error. Screenshots are kept in
``var/test-artefacts/ohif/`` (or ``$SPINENODE_TEST_ARTEFACTS/ohif``).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pydicom.uid import generate_uid

from dicom_node.writers import build_outputs
from inference.data.phantom import make_phantom
from inference.data.phantom_dicom import phantom_to_dataset
from inference.prediction import Quality
from tests.conftest import PROJECT, npm_ci, require_tool, storescu
from tests.dicom_node.outputs import fake_prediction, make_card, prediction_of
from tests.ohif import OhifServer, ohif_dist
from tests.orthanc import OrthancServer
from tests.radiographs import validation_radiographs

pytestmark = pytest.mark.slow

BROWSER = PROJECT / "tests" / "browser"
DRIVER = BROWSER / "ohif.mjs"
ARTEFACTS = Path(os.environ.get("SPINENODE_TEST_ARTEFACTS") or PROJECT / "var" / "test-artefacts") / "ohif"
NPM_TIMEOUT_S = 300
DRIVER_TIMEOUT_S = 300
SEGMENT_LABELS = ["Spine", "T1 vertebra"]
UNRELIABLE_REASONS = ["no T1 found"]
MIN_NONBLACK = 0.02  # share of a viewport screenshot that is not black when an image is shown
BLACK_LEVEL = 16  # brightest channel at or below which a screenshot pixel counts as black
SATURATION = 60  # max - min channel above which a screenshot pixel counts as coloured (a segment)
DOMINANCE = 40  # a green (red) pixel's green (red) exceeds its other channels by this much
MIN_SEGMENT_PIXELS = 20  # coloured pixels of a segment in a viewport screenshot
T1_RED_TO_GREEN = 0.8  # T1 blended over the Spine's green: red at least this share of green (green: ~0.5)


@dataclass(frozen=True)
class Case:
    """One study: a phantom of ``height`` rows drawn with ``seed`` (its width follows from the seed)."""

    name: str
    seed: int
    height: int
    reliable: bool = True
    radiograph: bool = False  # a real validation radiograph (seed: its index) with its true vertebra levels
    curves: int = 0  # of a radiograph: Cobb angles that are curves (a "no curve" secondary angle has no group)


CASES = (
    Case("even-width", 940020, 409),  # 409 x 136: frames of whole bytes
    Case("odd-width", 940023, 401),  # 401 x 109: frames not byte-aligned, total bytes even
    Case("odd-seg-bytes", 940016, 401),  # 401 x 195: 1-bit pixel data of an odd byte count
    Case("film-2500", 940003, 2500),  # 2500 x 421, odd byte count too
    Case("unreliable", 940013, 409, reliable=False),
    # vertebra segments, Cobb angles and T1 tilt: validation image 2, an S-curve with three curves; 19
    # segments of 1691 x 651, frames not byte-aligned, even total (BINARY)
    Case("radiograph-levels", 2, 0, radiograph=True, curves=3),
    # validation image 0, main curve T1-L5 (both secondary angles "no curve"), 19 segments: 616 x 209, frames
    # of an odd number of whole bytes, and 601 x 204, frames not byte-aligned; both odd totals (FRACTIONAL:
    # OHIF fails on a BINARY SEG with a pad byte)
    Case("radiograph-odd-frames", 0, 616, radiograph=True, curves=1),
    Case("radiograph-unaligned", 0, 601, radiograph=True, curves=1),
)


@dataclass
class Shown:
    case: Case
    columns: int
    sr_groups: int
    result: dict[str, Any]


def write_case(case: Case, folder: Path) -> tuple[str, int, int, list[Path]]:
    """Source, SEG, SR and SC of ``case`` as files; returns (study UID, columns, SR groups, files)."""
    if case.radiograph:
        [radiograph] = validation_radiographs(1, rows=case.height or None, first=case.seed)
        source, card = radiograph.dataset, make_card(demo=False)
        # an image's UIDs follow from its index: each size of it a study of its own (Orthanc keeps the first
        # instance of a UID, and the outputs' UIDs follow from the source's)
        for attr in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(source, attr, generate_uid(entropy_srcs=[case.name, attr]))
        source.file_meta.MediaStorageSOPInstanceUID = source.SOPInstanceUID
        outputs = build_outputs(source, prediction_of(radiograph, radiograph.levels), card)
    else:
        phantom = make_phantom(case.seed, height=case.height)
        card = make_card()
        source = phantom_to_dataset(phantom)
        prediction = fake_prediction(phantom, card, (phantom.pixel_spacing_mm,) * 2)
        if not case.reliable:
            prediction.quality = Quality(False, UNRELIABLE_REASONS)
        outputs = build_outputs(source, prediction, card, display_image=phantom.display_image())
    assert "VOILUTFunction" not in source  # LINEAR is the default; OHIF shows an explicit one black
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / "source.dcm"]
    source.save_as(files[0], enforce_file_format=True)
    for kind, ds in outputs.by_kind().items():
        files.append(folder / f"{kind}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    groups = outputs.sr.ContentSequence
    measured = [i for i in groups if i.ConceptNameCodeSequence[0].CodeValue == "126010"]
    n_groups = len(measured[0].ContentSequence) if measured and "ContentSequence" in measured[0] else 0
    return str(source.StudyInstanceUID), int(source.Columns), n_groups, files


@pytest.fixture(scope="module")
def shown(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Shown]]:
    node = require_tool("node")
    chromium = require_tool("chromium")
    npm_ci(BROWSER, timeout=NPM_TIMEOUT_S)
    dist = ohif_dist()
    work = tmp_path_factory.mktemp("ohif")
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTEFACTS.glob("*.png"):
        old.unlink()
    orthanc = OrthancServer(work / "orthanc").start()
    try:
        studies, meta, files = [], {}, []
        for case in CASES:
            study, columns, groups, paths = write_case(case, work / case.name)
            studies.append({"name": case.name, "study": study})
            meta[case.name] = (case, columns, groups)
            files += paths
        # -R: propose only the SOP classes of these files (dcmtk's default list has no Segmentation)
        sent = storescu(orthanc.dicom_port, *files, called=orthanc.ae_title, extra=("-R",))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        (work / "studies.json").write_text(json.dumps(studies))
        with OhifServer(dist, orthanc.http_port) as server:
            proc = subprocess.run(
                [node, str(DRIVER), server.url, str(work / "studies.json"), str(ARTEFACTS)],
                capture_output=True,
                text=True,
                timeout=DRIVER_TIMEOUT_S,
                env={**os.environ, "CHROMIUM": chromium},
                cwd=BROWSER,
            )
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        (ARTEFACTS / "report.json").write_text(json.dumps(report, indent=2))
        yield {
            name: Shown(case, columns, groups, report["studies"][name])
            for name, (case, columns, groups) in meta.items()
        }
    finally:
        orthanc.stop()


def screenshot(shown: Shown, step: str) -> np.ndarray:
    path = shown.result["screenshots"].get(step)
    assert path, f"no {step} screenshot: {shown.result.get('driver_error')}"
    return cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.int32)


def nonblack(rgb: np.ndarray) -> float:
    return float((rgb.max(axis=2) > BLACK_LEVEL).mean())


def hue_mask(rgb: np.ndarray, channel: int) -> np.ndarray:
    """Coloured pixels whose ``channel`` (0 red, 1 green) dominates the other two."""
    others = np.delete(rgb, channel, axis=2).max(axis=2)
    coloured = rgb.max(axis=2) - rgb.min(axis=2) > SATURATION
    return coloured & (rgb[..., channel] - others > DOMINANCE)


def t1_mask(rgb: np.ndarray) -> np.ndarray:
    """T1 as OHIF draws it: red, or (T1 inside the green Spine segment, blended) red as strong as green."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    coloured = rgb.max(axis=2) - rgb.min(axis=2) > SATURATION
    blended = (r > T1_RED_TO_GREEN * g) & (np.minimum(r, g) - b > DOMINANCE)
    return hue_mask(rgb, 0) | (coloured & blended)


CASE_NAMES = [c.name for c in CASES]
RELIABLE = [c.name for c in CASES if c.reliable and not c.radiograph]  # phantoms: two segments, two groups


@pytest.mark.parametrize("name", CASE_NAMES)
def test_no_errors_in_the_viewer(shown: dict[str, Shown], name: str) -> None:
    result = shown[name].result
    assert "driver_error" not in result, result.get("driver_error")
    assert result["console_errors"] == []
    assert result["page_errors"] == []
    assert result["http_errors"] == []


@pytest.mark.parametrize("name", CASE_NAMES)
def test_source_is_displayed(shown: dict[str, Shown], name: str) -> None:
    assert nonblack(screenshot(shown[name], "source")) > MIN_NONBLACK


@pytest.mark.parametrize("name", RELIABLE)
def test_seg_loads_its_segments_and_draws_them(shown: dict[str, Shown], name: str) -> None:
    seg = shown[name].result["seg"]
    assert seg["thumbnail"], shown[name].result["thumbnails"]
    assert [s["segments"] for s in seg["segmentations"]] == [SEGMENT_LABELS]
    before, after = screenshot(shown[name], "source"), screenshot(shown[name], "seg")
    assert not (hue_mask(before, 1) | hue_mask(before, 0)).any()  # the source itself is grey
    green, red = hue_mask(after, 1), t1_mask(after)
    assert green.sum() > MIN_SEGMENT_PIXELS and red.sum() > MIN_SEGMENT_PIXELS
    # T1, red, is drawn at the top of the column, green (the phantom's true labels)
    assert np.nonzero(red)[0].mean() < np.nonzero(green)[0].mean()


@pytest.mark.parametrize("name", RELIABLE)
def test_sr_opens_and_its_measurements_are_listed_and_placed(shown: dict[str, Shown], name: str) -> None:
    sr = shown[name].result["sr"]
    assert sr["thumbnail"] and sr["error_toasts"] == []
    measurements = sr["measurements"]
    assert [m["tracking"] for m in measurements] == SEGMENT_LABELS[: shown[name].sr_groups]
    assert len(measurements) == shown[name].sr_groups == len(SEGMENT_LABELS)
    for m in measurements:
        assert m["loaded"] and m["graphicType"] == "POLYLINE"  # drawn on the source image
        assert any(label.startswith("Area: ") and label.endswith(" mm2") for label in m["labels"])
    # OHIF's SR viewport writes each measurement's figures beside its outline on the image
    assert sr["viewport_text"].count("Area: ") == len(SEGMENT_LABELS), sr["viewport_text"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_sc_is_displayed(shown: dict[str, Shown], name: str) -> None:
    sc = screenshot(shown[name], "sc")
    assert nonblack(sc) > MIN_NONBLACK
    if shown[name].case.reliable:
        assert hue_mask(sc, 1).sum() > MIN_SEGMENT_PIXELS  # the burned-in column


def test_unreliable_prediction_has_no_seg_and_an_sr_without_measurements(shown: dict[str, Shown]) -> None:
    result = shown["unreliable"].result
    assert not any("SEG" in t.split() for t in result["thumbnails"]), result["thumbnails"]
    assert result["sr"]["thumbnail"] and result["sr"]["error_toasts"] == []
    # one group: the analysed image's edges, "No reliable segmentation", no figures
    [group] = result["sr"]["measurements"]
    assert group["tracking"] == "No reliable segmentation" and group["loaded"] and group["labels"] == []
    assert hue_mask(screenshot(shown["unreliable"], "sc"), 1).sum() <= MIN_SEGMENT_PIXELS  # no mask drawn


@pytest.mark.parametrize("name", [c.name for c in CASES if c.radiograph])
def test_vertebra_segments_cobb_angles_and_t1_tilt_are_shown(shown: dict[str, Shown], name: str) -> None:
    result = shown[name].result
    [segmentation] = result["seg"]["segmentations"]
    vertebrae = [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
    assert segmentation["segments"] == [*SEGMENT_LABELS, *vertebrae]
    sr = result["sr"]
    assert sr["thumbnail"] and sr["error_toasts"] == []
    tracked = [m["tracking"] for m in sr["measurements"]]
    assert tracked[:2] == SEGMENT_LABELS and len(tracked) == shown[name].sr_groups
    spine = sr["measurements"][2:]
    assert len(spine) == shown[name].case.curves + 1  # the Cobb angles that are curves, and the T1 tilt
    assert [m["tracking"].split(" (")[0] for m in spine] == [
        *(f"Cobb angle {i + 1}" for i in range(shown[name].case.curves)),
        "T1 tilt",
    ]
    for m in spine:
        assert m["loaded"] and m["referenced"], m  # placed on the source image (its endplate lines)
        [label] = m["labels"]
        assert label.endswith(" deg"), label
    main = spine[0]["labels"][0]
    assert spine[0]["tracking"].startswith("Cobb angle 1 (main)") and main.startswith("Cobb angle: ")
    float(main.removeprefix("Cobb angle: ").removesuffix(" deg"))  # a number (OHIF shows 0 as blank)
    assert any(line.startswith("T1 tilt") for line in sr["viewport_text"].splitlines())  # written on the image

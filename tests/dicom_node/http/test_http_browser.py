"""The web page end to end in a real browser: Debian's headless Chromium driven by ``playwright-core``
(``tests/browser/upload.mjs``, pinned in ``tests/browser/package-lock.json`` and installed with ``npm ci``;
no browser is ever downloaded).

A node on the shipped default model (trained on real radiographs) receives a real radiograph over DICOM
(so that the "Node" tab has a job with its overlay thumbnail), then the page uploads another real
radiograph as PNG with the file picker, waits for the overlay, reads the metrics table, opens the Node tab
and saves a screenshot to ``var/test-artefacts/`` (or ``$SPINENODE_TEST_ARTEFACTS``); a second run drops a
real radiograph's DICOM file on the page (drag and drop) and follows its SEG/SR/SC links. The radiographs
are SpineWeb validation images in a DX header (``tests/radiographs.py``), never trained on. Chromium is
required in CI (``make test`` installs it) and the test skips
elsewhere when it is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from pydicom import dcmread

from dicom_node.audit.report import audit_report
from dicom_node.config import DEFAULT_MODEL, NodeConfig
from dicom_node.http.server import HttpServer
from dicom_node.roles.node import Node
from inference.model_card import find_card
from inference.preprocess import from_dataset
from inference.registry import ModelRegistry
from tests.conftest import PROJECT, free_port, npm_ci, require_tool, storescu
from tests.radiographs import SHARED_DATA, validation_radiographs

BROWSER = PROJECT / "tests" / "browser"
SCRIPT = BROWSER / "upload.mjs"
ARTEFACTS = Path(os.environ.get("SPINENODE_TEST_ARTEFACTS") or PROJECT / "var" / "test-artefacts")
RADIOGRAPH_ROWS = 1024  # the radiographs resized to this many rows (a quicker page)
NPM_TIMEOUT_S = 300
BROWSER_TIMEOUT_S = 240
NODE_RADIOGRAPH, PNG_RADIOGRAPH, DROP_RADIOGRAPH = 0, 1, 2  # validation images the default model segments


def radiograph_file(folder: Path, index: int, suffix: str) -> Path:
    """Validation radiograph ``index`` as a DX file (``.dcm``) or as the 8-bit PNG of its display image."""
    [radiograph] = validation_radiographs(1, rows=RADIOGRAPH_ROWS, first=index)
    path = folder / f"radiograph-{index}{suffix}"
    if suffix == ".dcm":
        radiograph.dataset.save_as(path, enforce_file_format=True)
    else:
        image = from_dataset(radiograph.dataset).image
        cv2.imwrite(str(path), np.round(image * 255).astype(np.uint8))
    return path


def run_page(url: str, image: Path, screenshot: Path, via: str = "picker", node_screenshot: Path | None = None) -> dict:
    """``upload.mjs`` in headless Chromium: what the page showed after uploading ``image`` (and a
    screenshot of the Node tab in ``node_screenshot`` when given)."""
    node = require_tool("node")
    chromium = require_tool("chromium")
    npm_ci(BROWSER, timeout=NPM_TIMEOUT_S)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    screenshot.unlink(missing_ok=True)
    extra = []
    if node_screenshot is not None:
        node_screenshot.unlink(missing_ok=True)
        extra.append(str(node_screenshot))
    proc = subprocess.run(
        [node, str(SCRIPT), url, str(image), str(screenshot), *extra],
        capture_output=True,
        text=True,
        timeout=BROWSER_TIMEOUT_S,
        env={**os.environ, "CHROMIUM": chromium, "UPLOAD_VIA": via},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def page_url(tmp_path_factory: pytest.TempPathFactory, models_root: Path, onnx_cache: Path) -> Iterator[str]:
    """A node on the default model with its web page, holding one finished DICOM job."""
    require_tool("node")  # skip (or fail in CI) before starting a node the browser cannot reach
    require_tool("chromium")
    if not SHARED_DATA.is_dir():
        pytest.skip("needs ../shared/data/spineweb16")
    sent = radiograph_file(tmp_path_factory.mktemp("sent"), NODE_RADIOGRAPH, ".dcm")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPINENODE_MODELS_DIR", str(models_root))
        mp.setenv("SPINENODE_CACHE_DIR", str(onnx_cache))
        config = NodeConfig(data_dir=tmp_path_factory.mktemp("var"), port=free_port(), bind="127.0.0.1")
        assert config.model == DEFAULT_MODEL
        node = Node.compose(config, ModelRegistry(models_root))
        node.start()
        http = HttpServer(node, "127.0.0.1", free_port())
        http.start()
        try:
            assert storescu(node.port, sent).returncode == 0
            deadline = time.monotonic() + 120
            while not any(j["state"] == "done" for j in audit_report(node.db)["jobs"]):
                assert time.monotonic() < deadline, "the DICOM job did not finish"
                time.sleep(0.2)
            yield http.url
        finally:
            http.stop()
            node.stop()


@pytest.mark.slow
def test_upload_in_headless_chromium(page_url: str, tmp_path: Path) -> None:
    png = radiograph_file(tmp_path, PNG_RADIOGRAPH, ".png")
    label = find_card(DEFAULT_MODEL).disclaimer  # the page shows each model card's disclaimer
    rows, cols = cv2.imread(str(png), cv2.IMREAD_UNCHANGED).shape[:2]
    screenshot, node_screenshot = ARTEFACTS / "web-page-upload.png", ARTEFACTS / "web-page-node.png"
    page = run_page(page_url, png, screenshot, node_screenshot=node_screenshot)
    assert page["model"] == DEFAULT_MODEL
    assert page["status"] == f"{png.name} segmented."
    for key in ("original", "mask", "overlay"):
        assert page["images"][key] == {"width": cols, "height": rows}, key
    table = {row["class"]: row["cells"] for row in page["rows"]}
    assert {"V", "T1"} <= set(table)
    assert int(table["V"][1]) > 0 and int(table["T1"][1]) > 0  # pixels: the default model finds both
    assert "flip agreement Dice" in page["headers"] and not any("accuracy" in h.lower() for h in page["headers"])
    # the default model reports Cobb angles: three rows, each end vertebrae "Tn–Lm" or the challenge's
    # "no curve" (never one vertebra at both ends) and T1 tilt
    cobb = [m["cells"] for m in page["measurements"] if m["measurement"].startswith("cobb-")]
    assert len(cobb) == 3 and all(c[1].endswith("°") for c in cobb), cobb
    assert all(c[2] == "no curve" or len(set(c[2].split("–"))) == 2 for c in cobb), cobb
    assert ["0.0°", "no curve"] in [c[1:] for c in cobb], cobb  # this image's third angle (T11-L4 main curve)
    assert [m["measurement"] for m in page["measurements"]][-1] == "t1-tilt"
    assert page["demo_warning"] == label and "NOT FOR DIAGNOSTIC USE" in label
    [job] = page["jobs"]
    assert "done" in job["cells"]
    assert any(DEFAULT_MODEL in cell and label in cell for cell in job["cells"]), job["cells"]
    assert job["thumbnail"] is not None and job["thumbnail"]["width"] > 0
    assert page["console_errors"] == []
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
    assert node_screenshot.is_file() and node_screenshot.stat().st_size > 10_000
    assert [d["text"] for d in page["downloads"]] == ["metrics JSON"]  # no SEG/SR/SC for a PNG


@pytest.mark.slow
def test_dicom_upload_in_headless_chromium(page_url: str, tmp_path: Path) -> None:
    """A DICOM file dropped on the page: figures in mm², and links to the SEG, SR and SC written for it."""
    dropped = radiograph_file(tmp_path, DROP_RADIOGRAPH, ".dcm")
    page = run_page(page_url, dropped, ARTEFACTS / "web-page-dicom.png", via="drop")
    source = dcmread(dropped, stop_before_pixels=True)
    assert page["images"]["overlay"] == {"width": source.Columns, "height": source.Rows}
    table = {row["class"]: row["cells"] for row in page["rows"]}
    assert table["V"][3].endswith("mm²") and int(table["T1"][1]) > 0
    links = {d["text"]: d["href"] for d in page["downloads"]}
    assert {"SEG", "SR", "overlay SC"} <= set(links)
    for text in ("SEG", "SR", "overlay SC"):
        ds = dcmread(BytesIO(httpx.get(page_url.rstrip("/") + links[text], timeout=30).content))
        assert ds.StudyInstanceUID == source.StudyInstanceUID, text

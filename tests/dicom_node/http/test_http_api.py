"""The web page's REST API for real: a node (tiny real model) with its HTTP server on a free loopback port,
driven with httpx; DICOM jobs come in through dcmtk ``storescu`` and go out to a dcmtk ``storescp``.

Uploads segment with the tiny model (background everywhere: the plumbing) and a tiny U-Net++ (all three
classes: the label, colour mask and overlay PNGs); one test segments with the shipped default model, one
runs ``spinenode serve --http-port`` as a process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from pydicom import dcmread

from dicom_node.config import ConfigError, Destination, NodeConfig, load_config
from dicom_node.http import uploads
from dicom_node.http.server import HttpServer
from dicom_node.http.uploads import MAX_UPLOAD_BYTES, UPLOADS_DIR
from dicom_node.roles.node import Node
from dicom_node.writers.overlay import COLOUR_LUT
from inference.analysis.metrics import overlap
from inference.classes import SpineClass
from inference.data.phantom_dicom import write_phantoms
from inference.model_card import find_card
from inference.registry import ModelRegistry
from tests.conftest import PROJECT, TINY_MODEL, StoreSCP, free_port, make_tiny_model, storescu, wait_port

SEG, SR3D, SC = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"
DEMO_MODEL = "demo-unetplusplus"
BUSY_MODEL = "tiny-unetpp-http"  # a tiny U-Net++ with random weights: predicts V and T1 (in a random pattern)
UPLOAD_LIMIT = 1 * 2**20  # the test server's upload limit (the real one, MAX_UPLOAD_BYTES, is 64 MiB)
MAX_PIXELS = 2_000_000  # the test node's max_pixels (a phantom of height 640 has about 64,000)
PNG_SEED = 930001
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$')


@dataclass
class Served:
    node: Node
    http: HttpServer
    client: httpx.Client


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, dest: StoreSCP, models_root: Path, onnx_cache: Path
) -> Iterator[Served]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPINENODE_MODELS_DIR", str(models_root))
        mp.setenv("SPINENODE_CACHE_DIR", str(onnx_cache))
        config = NodeConfig(
            data_dir=tmp_path_factory.mktemp("var"),
            port=free_port(),
            bind="127.0.0.1",
            model=TINY_MODEL,
            destinations=(Destination.parse(dest.destination),),
            max_pixels=MAX_PIXELS,
        )
        node = Node.compose(config, ModelRegistry(models_root))
        node.start()
        http = HttpServer(node, "127.0.0.1", free_port(), max_upload_bytes=UPLOAD_LIMIT)
        http.start()
        client = httpx.Client(base_url=http.url, timeout=120)
        try:
            yield Served(node, http, client)
        finally:
            client.close()
            http.stop()
            node.stop()


@pytest.fixture(scope="module")
def phantom_png(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A phantom PNG of a seed no model saw, and its true label mask."""
    out = tmp_path_factory.mktemp("png")
    [entry] = write_phantoms(out, 1, PNG_SEED, "png", height=640)
    return out / entry["file"], out / entry["mask"]


@pytest.fixture(scope="module")
def busy_model(models_root: Path) -> str:
    """A tiny model in the node's models directory whose masks are not all background."""
    if not (models_root / BUSY_MODEL).is_dir():
        make_tiny_model(models_root, BUSY_MODEL, architecture="unetplusplus")
    return BUSY_MODEL


def png_of(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, "not a PNG"
    return image


def segment(client: httpx.Client, path: Path, model: str | None = None, name: str | None = None) -> httpx.Response:
    files = {"file": (name or path.name, path.read_bytes(), "application/octet-stream")}
    return client.post("/api/segment", files=files, data={"model": model} if model else None)


def upload_dirs(node: Node) -> list[Path]:
    root = node.config.data_dir / UPLOADS_DIR
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def test_health(served: Served) -> None:
    r = served.client.get("/api/health")
    assert r.status_code == 200
    h = r.json()
    assert h["status"] == "healthy"
    assert h["dicom"] == {"ae_title": "SPINENODE", "port": served.node.port, "accepting": True}
    assert h["device"] == "cpu"
    assert set(h["queue"]) >= {"pending", "running", "failed"}
    assert set(h["deliveries"]) >= {"pending", "failed"}
    models = {m["name"]: m for m in h["models"]}
    assert {"name", "loaded", "demo"} <= set(models[TINY_MODEL])
    assert models[DEMO_MODEL]["demo"] is True
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in r.headers["content-security-policy"]


def test_models_are_the_cards(served: Served) -> None:
    r = served.client.get("/api/models")
    assert r.status_code == 200
    cards = {c["name"]: c for c in r.json()}
    assert cards[TINY_MODEL]["default"] is True and cards[DEMO_MODEL]["default"] is False
    demo = cards[DEMO_MODEL]
    assert demo["demo"] is True and "NOT FOR DIAGNOSTIC USE" in demo["disclaimer"]
    assert demo["architecture"] == "unetplusplus" and len(demo["weights_sha256"]) == 64
    assert demo["input_size"] == list(find_card(DEMO_MODEL, served.node.models.root).input_size)


def test_page_and_its_files(served: Served) -> None:
    page = served.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="model-warning"' in page.text and 'id="quality"' in page.text  # filled from the model card
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        r = served.client.get(asset)
        assert r.status_code == 200 and r.content, asset
    script = served.client.get("/static/app.js").text
    assert "/api/segment" in script and "/api/jobs" in script and "/api/models" in script
    assert "disclaimer" in script and "No reliable segmentation" in script
    assert "https://" not in page.text + script, "the page loads nothing from elsewhere"


def test_segment_png(served: Served, phantom_png: tuple[Path, Path]) -> None:
    png, _ = phantom_png
    image = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    r = segment(served.client, png)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["name"] == TINY_MODEL and body["model"]["demo"] is True
    assert body["input"] == {
        "filename": png.name,
        "kind": "png",
        "bytes": png.stat().st_size,
        "rows": image.shape[0],
        "columns": image.shape[1],
    }
    assert set(body["classes"]) == {"V", "T1", "Spine"}
    for stats in body["classes"].values():
        assert {"pixels", "coverage_percent", "area", "mean_confidence", "flip_dice", "flip_jaccard"} <= set(stats)
        assert stats["area_unit"] == "pixels"  # a PNG has no pixel spacing
    assert body["flip_agreement"] is True
    text = json.dumps(body).lower()
    assert "accuracy" not in text and '"iou"' not in text and '"dice"' not in text
    assert body["timing_ms"]["inference"] > 0 and body["timing_ms"]["total"] >= body["timing_ms"]["inference"]
    urls = body["urls"]
    assert {"original", "mask", "mask_labels", "overlay", "metrics", "input"} <= set(urls)
    assert not {"seg", "sr", "sc"} & set(urls)
    for key in ("original", "mask", "overlay"):
        got = served.client.get(urls[key])
        assert got.status_code == 200 and got.headers["content-type"] == "image/png"
        assert png_of(got.content).shape[:2] == image.shape[:2], key
    labels = png_of(served.client.get(urls["mask_labels"]).content)
    assert set(np.unique(labels)) <= {0, 127, 254}
    metrics = served.client.get(urls["metrics"]).json()
    assert metrics["classes"]["V"]["pixels"] == body["classes"]["V"]["pixels"]
    assert served.client.get(urls["input"]).content == png.read_bytes()


def test_segment_png_masks_and_overlay(served: Served, busy_model: str, phantom_png: tuple[Path, Path]) -> None:
    """With a model that finds both classes: the label PNG holds them with the reported pixel counts, the
    coloured mask is the class colours of those labels, and the overlay tints them into the original."""
    png, _ = phantom_png
    r = segment(served.client, png, busy_model)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["name"] == busy_model
    urls = body["urls"]
    grey = png_of(served.client.get(urls["mask_labels"]).content)
    assert grey.ndim == 2 and set(np.unique(grey)) <= {0, 127, 254}
    labels = grey // 127
    assert {1, 2} <= set(np.unique(labels)), "the busy model predicts V and T1"
    for cls in (SpineClass.V, SpineClass.T1):
        assert int((labels == cls).sum()) == body["classes"][cls.name]["pixels"], cls.name
    colour = png_of(served.client.get(urls["mask"]).content)  # decoded as BGR
    expected_rgb = COLOUR_LUT[labels, 0]
    assert colour.shape == (*labels.shape, 3)
    assert np.array_equal(colour, expected_rgb[..., ::-1])
    assert np.array_equal(colour[labels == SpineClass.V][0], (0, 200, 0))  # green, BGR
    assert np.array_equal(colour[labels == SpineClass.T1][0], (0, 0, 230))  # red, BGR
    original = png_of(served.client.get(urls["original"]).content)
    overlay = png_of(served.client.get(urls["overlay"]).content)
    assert original.shape == overlay.shape == (*labels.shape, 3)
    changed = np.any(original != overlay, axis=2)
    assert changed[labels > 0].mean() > 0.9, "the classes are tinted into the overlay"
    # the tint pulls V pixels towards green and T1 pixels towards red (BGR channels 1 and 2)
    diff = overlay.astype(np.int16) - original.astype(np.int16)
    assert diff[labels == SpineClass.V][:, 1].mean() > diff[labels == SpineClass.V][:, 2].mean()
    assert diff[labels == SpineClass.T1][:, 2].mean() > diff[labels == SpineClass.T1][:, 1].mean()


def test_segment_jpeg(served: Served, phantom_png: tuple[Path, Path], tmp_path: Path) -> None:
    grey = cv2.imread(str(phantom_png[0]), cv2.IMREAD_GRAYSCALE)
    jpeg = tmp_path / "phantom.jpg"
    cv2.imwrite(str(jpeg), grey)
    r = segment(served.client, jpeg)
    assert r.status_code == 200, r.text
    assert r.json()["input"]["kind"] == "jpeg"


def test_segment_dicom_writes_seg_sr_sc(served: Served, phantom_files: list[Path]) -> None:
    source = dcmread(phantom_files[0])
    r = segment(served.client, phantom_files[0])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["input"]["kind"] == "dicom"
    assert body["classes"]["V"]["area_unit"] == "mm2"  # the DX's pixel spacing
    got = {}
    for key, sop_class in (("seg", SEG), ("sr", SR3D), ("sc", SC)):
        resp = served.client.get(body["urls"][key])
        assert resp.status_code == 200 and resp.headers["content-type"] == "application/dicom"
        ds = dcmread(BytesIO(resp.content))
        assert ds.SOPClassUID == sop_class, key
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        got[key] = ds
    refs = {
        item.SourceImageSequence[0].ReferencedSOPInstanceUID
        for item in got["seg"].PerFrameFunctionalGroupsSequence
        for item in item.DerivationImageSequence
    }
    assert refs == {source.SOPInstanceUID}
    assert (got["sc"].Rows, got["sc"].Columns) == (source.Rows, source.Columns)
    assert "NOT FOR DIAGNOSTIC USE" in str(got["sr"]).upper()
    original = png_of(served.client.get(body["urls"]["original"]).content)
    assert original.shape[:2] == (source.Rows, source.Columns)


@pytest.mark.slow
def test_segment_with_the_shipped_default_model(served: Served, phantom_png: tuple[Path, Path]) -> None:
    png, truth_png = phantom_png
    truth = cv2.imread(str(truth_png), cv2.IMREAD_GRAYSCALE)
    segment(served.client, png, DEMO_MODEL)  # loads the model (and its ONNX export) once
    start = time.perf_counter()
    r = segment(served.client, png, DEMO_MODEL)
    latency_ms = (time.perf_counter() - start) * 1000
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["name"] == DEMO_MODEL and body["model"]["demo"] is True
    labels = png_of(served.client.get(body["urls"]["mask_labels"]).content) // 127
    spine = overlap(labels > 0, truth > 0)
    t1 = overlap(labels == 2, truth == 2)
    assert spine.dice is not None and spine.dice > 0.85, spine
    assert t1.dice is not None and t1.dice > 0.5, t1
    assert body["classes"]["Spine"]["flip_dice"] > 0.9
    print(
        f"POST /api/segment {DEMO_MODEL} {body['input']['columns']}x{body['input']['rows']} PNG: "
        f"{latency_ms:.0f} ms (inference {body['timing_ms']['inference']:.0f} ms)"
    )


def test_refusals_are_plain_4xx_and_leave_nothing(
    served: Served, phantom_png: tuple[Path, Path], phantom_files: list[Path], tmp_path: Path
) -> None:
    client = served.client
    before = upload_dirs(served.node)

    def post(data: bytes, name: str = "x.png", **extra: str) -> httpx.Response:
        return client.post("/api/segment", files={"file": (name, data)}, data=extra or None)

    cases: list[tuple[httpx.Response, int, str]] = [
        (post(b"\x89PNG\r\n\x1a\n" + bytes(UPLOAD_LIMIT + 10)), 413, "too large"),
        (post(os.urandom(5000), "noise.bin"), 415, "not a PNG, JPEG or DICOM"),
        (post(b"\x89PNG\r\n\x1a\n" + os.urandom(300)), 400, "unreadable PNG"),
        (post(cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1].tobytes()), 400, "too small"),
        (post(cv2.imencode(".png", np.zeros((1500, 1500), np.uint8))[1].tobytes()), 400, "too large"),
        (post(phantom_png[0].read_bytes(), model="no-such-model"), 404, "unknown model 'no-such-model'"),
        (post(b""), 400, "empty"),
        (client.post("/api/segment", data={"model": TINY_MODEL}), 400, "no file"),
        (client.post("/api/segment", content=b"garbage", headers={"content-type": "multipart/form-data"}), 400, ""),
    ]
    # a body without Content-Length (chunked) is cut off at the limit as well
    chunks = iter(
        [b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'] + [bytes(2**16)] * 40
    )
    chunked = client.post("/api/segment", content=chunks, headers={"content-type": "multipart/form-data; boundary=b"})
    cases.append((chunked, 413, "too large"))
    for response, status, words in cases:
        assert response.status_code == status, (status, response.text)
        detail = response.json()["detail"]
        assert isinstance(detail, str) and words in detail, detail
        assert "/tmp" not in detail and str(PROJECT) not in detail, "no server paths in messages"
    # DICOM files without pixel data, and without an image at all
    ds = dcmread(phantom_files[0])
    del ds.PixelData
    ds.save_as(tmp_path / "no-pixels.dcm", enforce_file_format=True)
    del ds.Rows
    ds.save_as(tmp_path / "no-image.dcm", enforce_file_format=True)
    for name, words in (("no-pixels.dcm", "no pixel data"), ("no-image.dcm", "no image")):
        r = segment(client, tmp_path / name)
        assert r.status_code == 400 and words in r.json()["detail"], r.text
    assert upload_dirs(served.node) == before, "refused uploads leave no files"
    assert client.get("/api/health").json()["dicom"]["accepting"] is True


def test_inference_runs_off_the_event_loop(
    served: Served, phantom_png: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While an upload is being segmented (held here), the server answers other requests; an unexpected
    error in segmentation is a plain 500 and the server carries on."""
    import dicom_node.http.app as app_module

    entered, release = threading.Event(), threading.Event()
    real = app_module.segment_upload

    def held(*args: object, **kwargs: object) -> object:
        entered.set()
        assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(app_module, "segment_upload", held)
    with ThreadPoolExecutor(1) as pool:
        upload = pool.submit(segment, served.client, phantom_png[0])
        assert entered.wait(60)
        start = time.perf_counter()
        assert served.client.get("/api/health", timeout=10).status_code == 200
        assert served.client.get("/api/jobs", timeout=10).status_code == 200
        assert time.perf_counter() - start < 10 and not upload.done()
        release.set()
        assert upload.result(timeout=120).status_code == 200

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr(app_module, "segment_upload", broken)
    r = segment(served.client, phantom_png[0])
    assert r.status_code == 500 and r.json() == {"detail": "internal error: RuntimeError"}
    assert served.client.get("/api/health").status_code == 200


def test_only_the_latest_uploads_are_kept(
    served: Served, phantom_png: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uploads, "KEEP_UPLOADS", 2)
    ids = []
    for _ in range(3):
        r = segment(served.client, phantom_png[0])
        assert r.status_code == 200, r.text
        ids.append(r.json()["id"])
    assert [p.name for p in upload_dirs(served.node)] == sorted(ids[1:])
    assert served.client.get(f"/api/results/{ids[0]}/input.png").status_code == 404
    for result_id in ids[1:]:
        assert served.client.get(f"/api/results/{result_id}/input.png").status_code == 200


def test_result_files_only_by_id_and_name(served: Served) -> None:
    for path in (
        "/api/results/../../spinenode.db",
        "/api/results/0123456789abcdef0123456789abcdef/input.png",
        "/api/results/not-an-id/input.png",
        "/api/results/0123456789abcdef0123456789abcdef/..%2F..%2Fspinenode.db",
    ):
        assert served.client.get(path).status_code == 404, path


@pytest.fixture(scope="module")
def stored_job(served: Served, dest: StoreSCP, phantom_files: list[Path]) -> dict:
    """A phantom sent over DICOM with storescu, processed and delivered to the storescp destination."""
    before = len(dest.files())
    proc = storescu(served.node.port, phantom_files[1])
    assert proc.returncode == 0, proc.stderr
    dest.wait_for_files(before + 3)
    source_uid = dcmread(phantom_files[1]).SOPInstanceUID
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        jobs = served.client.get("/api/jobs", params={"limit": 10}).json()["jobs"]
        job = next((j for j in jobs if j["sop_instance_uid"] == source_uid), None)
        delivered = job is not None and all(d["state"] == "delivered" for o in job["outputs"] for d in o["deliveries"])
        if job is not None and job["state"] == "done" and len(job["outputs"]) == 3 and delivered:
            return job
        time.sleep(0.2)
    raise TimeoutError("the job did not finish and deliver in time")


def test_jobs_received_over_dicom(served: Served, stored_job: dict, dest: StoreSCP) -> None:
    job = stored_job
    assert job["model"] == TINY_MODEL
    assert {o["kind"] for o in job["outputs"]} == {"seg", "sr", "sc"}
    for o in job["outputs"]:
        [d] = o["deliveries"]
        assert d["destination"] == dest.destination and d["state"] == "delivered" and d["attempts"] == 1
    one = served.client.get(f"/api/jobs/{job['id']}")
    assert one.status_code == 200
    detail = one.json()
    assert detail["sop_instance_uid"] == job["sop_instance_uid"] and detail["state"] == "done"
    for o in detail["outputs"]:
        [d] = o["deliveries"]
        [attempt] = d["attempt_log"]
        assert attempt["status"] == 0 and attempt["error"] is None and attempt["at"].endswith("Z")
    thumb = served.client.get(job["urls"]["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    assert max(png_of(thumb.content).shape[:2]) <= 320
    sc = served.client.get(job["urls"]["sc"])
    assert dcmread(BytesIO(sc.content)).SOPClassUID == SC
    assert served.client.get("/api/jobs/999999").status_code == 404
    assert served.client.get("/api/jobs/999999/overlay.png").status_code == 404
    bad = served.client.get("/api/jobs", params={"limit": 0})
    assert bad.status_code == 422 and "limit" in bad.json()["detail"]
    assert len(served.client.get("/api/jobs", params={"limit": 1}).json()["jobs"]) == 1


def parse_prometheus(text: str) -> dict[str, float]:
    """``name{labels}`` -> value; every line must be a comment or a valid sample."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        samples[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return samples


def test_metrics(served: Served, stored_job: dict, phantom_png: tuple[Path, Path]) -> None:
    assert segment(served.client, phantom_png[0]).status_code == 200
    r = served.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    m = parse_prometheus(r.text)
    assert m["spinenode_instances_received_total"] >= 1
    assert m["spinenode_jobs_received_total"] >= 1 and m["spinenode_jobs_processed_total"] >= 1
    assert m["spinenode_jobs_failed_total"] == 0
    assert m['spinenode_jobs{state="done"}'] >= 1
    assert m["spinenode_delivery_attempts_total"] >= 3 and m["spinenode_delivery_failures_total"] == 0
    assert m[f'spinenode_model_loaded{{model="{TINY_MODEL}",demo="true"}}'] == 1
    for source in ("dicom", "upload"):
        count = m[f'spinenode_inference_seconds_count{{source="{source}"}}']
        assert count >= 1, source
        buckets = [v for k, v in m.items() if k.startswith(f'spinenode_inference_seconds_bucket{{source="{source}"')]
        assert buckets == sorted(buckets) and buckets[-1] == count  # cumulative, +Inf last
        assert m[f'spinenode_inference_seconds_sum{{source="{source}"}}'] > 0
    assert "# TYPE spinenode_inference_seconds histogram" in r.text


def test_config_http_defaults_and_toml(tmp_path: Path) -> None:
    assert NodeConfig().http_host == "127.0.0.1" and NodeConfig().http_port == 0
    shipped = load_config(PROJECT / "config" / "node.toml")
    assert shipped.http_host == "127.0.0.1"
    toml = tmp_path / "node.toml"
    toml.write_text('[http]\nhost = "127.0.0.2"\nport = 8089\n')
    assert (load_config(toml).http_host, load_config(toml).http_port) == ("127.0.0.2", 8089)
    assert load_config(toml, http_port=9000).http_port == 9000
    toml.write_text('[http]\nhost = "0.0.0.0"\nport = 8089\n')  # beyond loopback: only with authentication
    with pytest.raises(ConfigError, match="without authentication"):
        load_config(toml)
    toml.write_text("[http]\nlisten = 1\n")
    with pytest.raises(ConfigError, match=r"unknown \[http\] keys"):
        load_config(toml)
    toml.write_text("[http]\nport = 70000\n")
    with pytest.raises(ConfigError, match="HTTP port"):
        load_config(toml)
    assert MAX_UPLOAD_BYTES == 64 * 2**20


@pytest.mark.slow
def test_serve_cli_with_http_port(tmp_path: Path, models_root: Path) -> None:
    """``spinenode serve --http-port``: prints the page URL, answers, stops on SIGTERM; a second node on
    the same HTTP port stops at once with a plain error."""
    http_port = free_port()
    env = {**os.environ, "SPINENODE_MODELS_DIR": str(models_root)}
    cmd = [sys.executable, "-m", "dicom_node.cli", "serve", "--bind", "127.0.0.1", "--model", TINY_MODEL]
    proc = subprocess.Popen(
        [*cmd, "--port", str(free_port()), "--data-dir", str(tmp_path / "a"), "--http-port", str(http_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=PROJECT,
    )
    url = f"http://127.0.0.1:{http_port}/"
    try:
        try:
            wait_port(http_port, timeout=60)
        except TimeoutError:
            proc.kill()
            pytest.fail(f"spinenode serve did not listen for HTTP: {proc.communicate(timeout=60)}")
        assert httpx.get(url + "api/health", timeout=30).json()["status"] == "healthy"
        second = subprocess.run(
            [*cmd, "--port", str(free_port()), "--data-dir", str(tmp_path / "b"), "--http-port", str(http_port)],
            capture_output=True,
            text=True,
            env=env,
            cwd=PROJECT,
            timeout=60,
        )
        assert second.returncode == 2 and f"cannot listen for HTTP on 127.0.0.1:{http_port}" in second.stderr
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"SpineNode web page and REST API at {url}" in out, out
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{http_port}/api/health", timeout=5)

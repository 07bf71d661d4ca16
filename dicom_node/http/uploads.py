"""``POST /api/segment``: one uploaded PNG, JPEG or DICOM file, segmented by the node's loaded models.

The upload is kept under ``<data dir>/uploads/<id>/`` with what ``spinenode segment`` writes for it
(``dicom_node.roles.segment_file``: overlay PNG, mask PNG, metrics JSON and, for DICOM, SEG, SR and SC), the
image as displayed (``-original.png``) and a coloured mask (``-mask-colour.png``). Only the latest
``KEEP_UPLOADS`` results are kept. Everything here is blocking: the app runs it in a thread pool.

Refusals, each with a plain message (``UploadError``): a file over the size limit (413), a file that
is neither PNG, JPEG nor DICOM (415), an image that cannot be used (400: undecodable, too small, not an
image, more pixels than the node's ``max_pixels``), an unknown model (404), a model that fails to load
(503); anything else that goes wrong while segmenting (422, logged).
"""

from __future__ import annotations

import logging
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom_node.roles.segment_file import NotAnImageError, segment_file
from dicom_node.storage import write_durably
from inference.model_card import find_card, list_cards
from inference.preprocess import UnusableImageError, declared_size_problem
from inference.registry import ModelRegistry

if TYPE_CHECKING:
    from inference.engine import Engine

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 64 * 2**20  # 64 MiB: an uncompressed 4300 x 4300 16-bit DX is about 37 MB
KEEP_UPLOADS = 100  # results kept under <data dir>/uploads (older ones are deleted)
UPLOADS_DIR = "uploads"
INPUT_STEM = "input"
RESULT_ID = re.compile(r"^[0-9a-f]{32}$")
RESULT_FILE = re.compile(r"^input(-[a-z]+(-[a-z]+)?)?\.(png|jpg|dcm|json)$")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICOM_MAGIC_OFFSET = 128  # "DICM" after the 128-byte preamble of a Part 10 file


class UploadError(Exception):
    """A refused upload: HTTP status and a plain message for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class SegmentRequest:
    data: bytes
    filename: str
    model: str


def sniff(data: bytes) -> str:
    """``png``, ``jpeg`` or ``dicom`` (a Part 10 file) from the first bytes; else 415."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return "dicom"
    raise UploadError(415, "not a PNG, JPEG or DICOM file")


def check_size(path: Path, kind: str, max_pixels: int) -> tuple[int, int]:
    """Rows and columns from the header, before anything is decoded; 400 when unusable or too large."""
    if kind == "dicom":
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            raise UploadError(400, f"unreadable DICOM file: {_plain(exc, path.parent)}") from None
        if "Rows" not in ds or "Columns" not in ds:
            raise UploadError(400, "the DICOM file holds no image (no Rows/Columns)")
        try:
            rows, cols, frames = int(ds.Rows), int(ds.Columns), int(ds.get("NumberOfFrames", 1) or 1)
        except (TypeError, ValueError):
            raise UploadError(400, "the DICOM file's Rows, Columns or NumberOfFrames are not numbers") from None
    else:
        try:
            with Image.open(path) as im:  # reads the header only
                cols, rows = im.size
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken headers
            raise UploadError(400, f"unreadable {kind.upper()} image: {_plain(exc, path.parent)}") from None
        frames = 1
    too_large = declared_size_problem(rows, cols, frames, max_pixels)
    if too_large is not None:
        raise UploadError(400, too_large)
    return rows, cols


def check_model(name: str, models: ModelRegistry) -> Engine:
    """The loaded model ``name``: 404 for an unknown name (looked up first, so that it never counts as a
    failed load in the node's health), 503 when it cannot be loaded."""
    try:
        find_card(name, models.root)
    except KeyError:
        known = ", ".join(c.name for c in list_cards(models.root)) or "none"
        raise UploadError(404, f"unknown model {name!r} (available: {known})") from None
    try:
        return models.get(name)  # loaded once, then kept warm (the node's own registry)
    except Exception as exc:
        log.exception("model %s could not be loaded", name)
        raise UploadError(503, f"model {name!r} could not be loaded: {type(exc).__name__}") from None


def _plain(exc: BaseException, folder: Path) -> str:
    """The exception's message without the server's paths."""
    return str(exc).replace(str(folder) + "/", "").replace(str(folder), "")


def _prune(root: Path, keep: int) -> None:
    results = sorted(
        (p for p in root.iterdir() if p.is_dir() and RESULT_ID.match(p.name)), key=lambda p: p.stat().st_mtime
    )
    for old in results[: max(0, len(results) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def _segment(
    path: Path,
    folder: Path,
    kind: str,
    result_id: str,
    model: str,
    models: ModelRegistry,
    flip_agreement: bool,
    decode: Callable[[Dataset], np.ndarray] | None,
) -> dict[str, Any]:
    """``segment_file`` into the upload's folder, its failures as ``UploadError``."""
    try:
        return segment_file(
            path,
            folder,
            model,
            models=models,
            flip_agreement=flip_agreement,
            original_png=True,
            colour_mask_png=True,
            decode=decode,
        )
    except UnusableImageError as exc:
        raise UploadError(400, f"unusable image: {_plain(exc, folder)}") from None
    except NotAnImageError as exc:  # neither DICOM nor PNG/JPEG after all
        raise UploadError(415, _plain(exc, folder)) from None
    except Exception as exc:  # e.g. a DICOM image whose attributes the SEG/SR/SC cannot be built from
        log.exception("upload %s (%s) could not be segmented", result_id, kind)
        message = f"could not segment this {kind.upper()} file: {type(exc).__name__}: {_plain(exc, folder)}"
        raise UploadError(422, message) from None


def segment_upload(
    request: SegmentRequest,
    data_dir: Path,
    models: ModelRegistry,
    max_pixels: int,
    flip_agreement: bool,
    decode: Callable[[Dataset], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Segment one upload; the JSON answer of ``POST /api/segment`` (file names, not URLs, under ``files``)."""
    start = time.perf_counter()
    kind = sniff(request.data)
    card = check_model(request.model, models).card
    root = data_dir / UPLOADS_DIR
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    result_id = uuid.uuid4().hex
    folder = root / result_id
    folder.mkdir(mode=0o700)
    try:  # a refused or failed upload leaves nothing behind
        suffix = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm"}[kind]
        path = folder / f"{INPUT_STEM}{suffix}"
        write_durably(path, request.data)
        rows, cols = check_size(path, kind, max_pixels)
        summary = _segment(path, folder, kind, result_id, request.model, models, flip_agreement, decode)
        files = {key: Path(value).name for key, value in summary["files"].items()}
        files["input"] = path.name
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    total_ms = (time.perf_counter() - start) * 1000
    _prune(root, KEEP_UPLOADS)
    log.info("upload %s: %s %dx%d segmented by %s in %.0f ms", result_id, kind, rows, cols, card.name, total_ms)
    return {
        "id": result_id,
        "input": {
            "filename": request.filename,
            "kind": kind,
            "bytes": len(request.data),
            "rows": rows,
            "columns": cols,
        },
        "model": {
            "name": card.name,
            "display_name": card.display_name,
            "version": summary["model_version"],
            "demo": card.demo,
            "disclaimer": card.disclaimer,
        },
        "image_size": summary["image_size"],
        "classes": summary["classes"],  # per class: pixels, coverage_percent, area, mean_confidence, flip_*
        "flip_agreement": flip_agreement,  # agreement with the prediction on the mirrored image: not an accuracy
        "quality": summary["quality"],  # {"reliable", "reasons"}: unreliable predictions are not results
        "measurements": summary["measurements"],  # cobb [{angle_deg, upper, lower}], t1_tilt_deg; None if unmeasured
        "notes": summary["notes"],
        "timing_ms": {"inference": summary["inference_ms"], "total": round(total_ms, 1)},
        "files": files,
    }


def result_path(data_dir: Path, result_id: str, name: str) -> Path | None:
    """The file ``name`` of result ``result_id``, or None for anything else (no path tricks)."""
    if not RESULT_ID.match(result_id) or not RESULT_FILE.match(name):
        return None
    path = data_dir / UPLOADS_DIR / result_id / name
    return path if path.is_file() else None

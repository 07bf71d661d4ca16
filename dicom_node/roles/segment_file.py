"""``spinenode segment FILE --out DIR``: the seed app's upload flow on the command line.

For a DICOM file: SEG, SR and overlay SC (as the node would send them), an overlay PNG, a mask PNG and a
metrics JSON. For a PNG or JPEG: the overlay PNG, the mask PNG and the metrics JSON. A file that is
neither DICOM nor a PNG/JPEG image raises ``NotAnImageError`` (a ``ValueError``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom_node.config import load_config
from dicom_node.dimse.decoding import DecodeError
from dicom_node.storage import dataset_bytes, write_durably
from dicom_node.writers.outputs import build_outputs
from dicom_node.writers.overlay import colour_labels, display_rgb, render_overlay
from dicom_node.writers.source import pixel_spacing_mm
from inference.prediction import Prediction
from inference.preprocess import PreparedImage, UnusableImageError, from_dataset, from_image_file
from inference.registry import ModelRegistry

MASK_SCALE = 127  # mask PNG grey levels: V = 127, T1 = 254


class NotAnImageError(ValueError):
    """The file is neither DICOM nor a PNG/JPEG image."""


def _read(path: Path, decode: Callable[[Dataset], np.ndarray] | None = None) -> tuple[PreparedImage, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        return from_image_file(path), None
    try:
        ds = dcmread(path)
    except (InvalidDicomError, OSError) as exc:
        # not DICOM: perhaps an image file with another extension
        try:
            return from_image_file(path), None
        except ValueError:
            raise NotAnImageError(f"{path.name}: neither DICOM nor a PNG/JPEG image ({exc})") from None
    try:
        pixels = decode(ds) if decode is not None and "PixelData" in ds else None
    except DecodeError as exc:
        raise UnusableImageError(str(exc)) from exc
    return from_dataset(ds, pixels), ds


def segment_file(
    path: Path,
    out_dir: Path,
    model: str | None = None,
    *,
    models: ModelRegistry | None = None,
    flip_agreement: bool = True,
    original_png: bool = False,
    colour_mask_png: bool = False,
    decode: Callable[[Dataset], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Segment ``path`` into ``out_dir``. ``models``: a registry of loaded models to use (the running
    node's, for the web page); ``original_png``: also write the image as displayed (``-original.png``);
    ``colour_mask_png``: also write the mask in the class colours (``-mask-colour.png``);
    ``decode``: how to decode DICOM pixel data (the node's time-limited decoder, for uploads)."""
    model = model or load_config().model
    prepared, ds = _read(path, decode)
    engine = (models or ModelRegistry()).get(model)
    spacing = pixel_spacing_mm(ds) if ds is not None else None
    prediction: Prediction = engine.predict(prepared, spacing, flip_agreement=flip_agreement)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = path.stem
    written: dict[str, str] = {}
    display = display_rgb(ds, prepared.image) if ds is not None else _grey_rgb(prepared.image)
    if original_png:  # before the overlay is drawn into ``display``
        written["original_png"] = _png(out_dir / f"{stem}-original.png", cv2.cvtColor(display, cv2.COLOR_RGB2BGR))
    rgb = render_overlay(prediction.labels, prediction, engine.card, display)
    written["overlay_png"] = _png(out_dir / f"{stem}-overlay.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    written["mask_png"] = _png(out_dir / f"{stem}-mask.png", (prediction.labels * MASK_SCALE).astype(np.uint8))
    if colour_mask_png:
        colours = cv2.cvtColor(colour_labels(prediction.labels), cv2.COLOR_RGB2BGR)
        written["mask_colour_png"] = _png(out_dir / f"{stem}-mask-colour.png", colours)
    if ds is not None:
        outputs = build_outputs(ds, prediction, engine.card, display_image=prepared.image)
        for kind, obj in outputs.by_kind().items():  # no SEG for an unreliable prediction
            target = out_dir / f"{stem}-{kind}.dcm"
            write_durably(target, dataset_bytes(obj))
            written[kind] = str(target)
    summary = {"input": str(path), **prediction.to_json(), "files": written}
    metrics = out_dir / f"{stem}-metrics.json"
    metrics.write_text(json.dumps(summary, indent=2) + "\n")
    summary["files"]["metrics_json"] = str(metrics)
    return summary


def _grey_rgb(image: np.ndarray) -> np.ndarray:
    grey = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)


def _png(path: Path, image: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"could not encode {path.name}")
    write_durably(path, buf.tobytes())
    return str(path)

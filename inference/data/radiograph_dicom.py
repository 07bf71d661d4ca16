"""Real spine radiographs as DX files for tests and the benchmark: SpineWeb dataset 16 validation images
(never trained on) wrapped in the phantom's DX header (patient, study, equipment, detector modules), with
the real pixels.

The wrapped file says what it is in Image Comments. SpineWeb has no pixel spacing: the DX's Imager Pixel
Spacing (type 1 in the DX Detector module) is the phantom template's and is marked as not measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import Dataset

from inference.analysis.levels import to_spine_labels
from inference.data.phantom import BITS_STORED, make_phantom
from inference.data.phantom_dicom import phantom_to_dataset
from inference.data.spineweb import SpineWeb, level_mask

TEMPLATE_SEED = 910000  # phantom whose header the radiographs borrow (never used in training)
MAX_VALUE = 2**BITS_STORED - 1


@dataclass
class Radiograph:
    name: str
    dataset: Dataset
    truth: np.ndarray  # F/V/T1 labels at the file's size
    levels: np.ndarray  # level labels at the file's size
    angles: tuple[float, float, float]  # the dataset's three Cobb angles (angles.csv), main curve first


def validation_radiographs(data_dir: Path, n: int, rows: int | None = None, first: int = 0) -> list[Radiograph]:
    """The first ``n`` validation images (from ``first``) of the dataset in ``data_dir``, optionally resized
    to ``rows`` rows."""
    data = SpineWeb(data_dir)
    _, val = data.split()
    out = []
    for i, (record, image, levels) in enumerate(data.iter_samples(val[first : first + n])):
        if rows:
            scale = rows / image.shape[0]
            size = (max(8, round(image.shape[1] * scale)), rows)
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            levels = level_mask(record.corners, (size[1], size[0]), (scale, scale))
        seed = TEMPLATE_SEED + first + i
        ds = phantom_to_dataset(make_phantom(seed, height=64))
        r, c = image.shape
        ds.Rows, ds.Columns = r, c
        stored = image if ds.PhotometricInterpretation == "MONOCHROME2" else 1.0 - image  # template's photometric
        ds.PixelData = np.round(stored * MAX_VALUE).astype("<u2").tobytes()
        ds.WindowCenter, ds.WindowWidth = MAX_VALUE / 2, MAX_VALUE
        ds.WindowCenterWidthExplanation = "Full range"
        ds.ImageComments = (
            f"Real radiograph: SpineWeb dataset 16 validation image {record.name} (research data, test input); "
            "imager pixel spacing from a template, not measured"
        )
        out.append(Radiograph(record.name, ds, to_spine_labels(levels), levels, record.angles))
    return out


def write_radiographs(data_dir: Path, folder: Path, n: int, rows: int | None = None) -> list[Path]:
    """``folder/radiograph-<i>.dcm`` for the first ``n`` validation radiographs."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, r in enumerate(validation_radiographs(data_dir, n, rows)):
        path = folder / f"radiograph-{i}.dcm"
        r.dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths

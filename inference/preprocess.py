"""From a DICOM dataset or a PNG/JPEG file to the model's input tensor.

DICOM path (PS3.3 C.11 and C.7.6.3): Modality LUT (rescale or LUT sequence) -> VOI (window, VOI LUT
sequence, or a robust 0.5-99.5 percentile window when the dataset has none) -> MONOCHROME1 or
PresentationLUTShape INVERSE inverted -> [0, 1]. Colour images become luminance; of a multi-frame image
the first frame is used and the result says so. The image is then area-resized to the model input and the
grey plane copied to three channels (the seed app's convention: no mean/std normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

ROBUST_PERCENTILES = (0.5, 99.5)  # window used when a dataset carries no VOI of its own


class UnusableImageError(ValueError):
    """The input has no usable pixel data (missing, undecodable, too small, or not an image)."""


@dataclass
class PreparedImage:
    """A grey image in [0, 1] at native size, with what was done to get it."""

    image: np.ndarray  # float32, (rows, columns), 0 = black, 1 = white as displayed
    notes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape


MIN_SIDE = 8  # smaller images cannot be segmented meaningfully


def window_to_unit(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM linear VOI window (PS3.3 C.11.2.1.2.1) to [0, 1]."""
    width = max(float(width), 1.0)
    out = values.astype(np.float32)  # one float32 copy, then in place (a radiograph is millions of pixels)
    out -= center - 0.5
    out /= width - 1
    out += 0.5
    return np.clip(out, 0.0, 1.0, out=out)


def _robust_unit(values: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(values, ROBUST_PERCENTILES)
    if hi <= lo:
        hi = lo + 1
    return np.clip((values.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def from_dataset(ds: Dataset, pixels: np.ndarray | None = None) -> PreparedImage:
    """Prepare the displayed grey image of a DICOM image dataset (``pixels``: its pixel array, if already
    decoded)."""
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise UnusableImageError("dataset has no pixel data")
    notes: list[str] = []
    try:
        arr = ds.pixel_array if pixels is None else pixels
    except Exception as exc:  # decoders raise many types (ValueError, RuntimeError, plugin errors)
        raise UnusableImageError(f"pixel data could not be decoded: {exc}") from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if frames > 1:
        arr = arr[0]
        notes.append(f"multi-frame image ({frames} frames): first frame used")
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR") or arr.ndim == 3:
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            arr = apply_color_lut(arr, ds)
        elif photometric.startswith("YBR") and ds.get("PlanarConfiguration", 0) is not None:
            from pydicom.pixels import convert_color_space

            if photometric in ("YBR_FULL", "YBR_FULL_422"):
                arr = convert_color_space(arr, photometric, "RGB")
        arr = arr.astype(np.float32)
        if arr.ndim == 3 and arr.shape[-1] >= 3:
            arr = 0.299 * arr[..., 0] + 0.587 * arr[..., 1] + 0.114 * arr[..., 2]
        notes.append("colour image converted to luminance")
        peak = float(arr.max()) if arr.size else 0.0
        unit = arr / (255.0 if peak <= 255 else peak)
        return _checked(PreparedImage(np.clip(unit, 0, 1).astype(np.float32), notes))
    if arr.ndim != 2:
        raise UnusableImageError(f"unexpected pixel array shape {arr.shape}")
    identity = (
        "ModalityLUTSequence" not in ds
        and float(ds.get("RescaleSlope", 1) or 1) == 1.0
        and float(ds.get("RescaleIntercept", 0) or 0) == 0.0
    )
    values = arr if identity else apply_modality_lut(arr, ds)  # the identity LUT would only copy to float64
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = ds.WindowCenter, ds.WindowWidth
        center = float(center[0] if hasattr(center, "__len__") and not isinstance(center, str) else center)
        width = float(width[0] if hasattr(width, "__len__") and not isinstance(width, str) else width)
        unit = window_to_unit(values, center, width)
        notes.append(f"window {center:g}/{width:g}")
    elif "VOILUTSequence" in ds:
        out = apply_voi_lut(values, ds).astype(np.float32)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        unit = np.clip(out / float(2**bits - 1), 0, 1)
        notes.append("VOI LUT sequence")
    else:
        unit = _robust_unit(values)
        notes.append("no VOI in dataset: robust percentile window")
    # One inversion: MONOCHROME1, or an INVERSE presentation LUT shape on MONOCHROME2. (The DX IOD pairs
    # MONOCHROME1 with INVERSE to describe the same single inversion, not a second one.)
    inverse_shape = str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    unit = unit.astype(np.float32, copy=False)  # the window's float32 is kept, not copied again
    if photometric == "MONOCHROME1" or inverse_shape:
        np.subtract(np.float32(1.0), unit, out=unit)  # every branch above made a fresh array
        notes.append("MONOCHROME1 inverted" if photometric == "MONOCHROME1" else "presentation LUT INVERSE applied")
    return _checked(PreparedImage(unit, notes))


def from_image_file(path: str | Path) -> PreparedImage:
    """Prepare a PNG or JPEG file (8- or 16-bit, grey or colour)."""
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise UnusableImageError(f"{Path(path).name}: not a readable PNG or JPEG image")
    notes: list[str] = []
    if img.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if img.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        img = cv2.cvtColor(img, code)
        notes.append("colour image converted to luminance")
    peak = 65535.0 if img.dtype == np.uint16 else 255.0
    return _checked(PreparedImage((img.astype(np.float32) / peak), notes))


def _checked(prepared: PreparedImage) -> PreparedImage:
    rows, cols = prepared.image.shape
    if min(rows, cols) < MIN_SIDE:
        raise UnusableImageError(f"image of {rows}x{cols} pixels is too small to segment (minimum {MIN_SIDE})")
    if not np.isfinite(prepared.image).all():
        raise UnusableImageError("image holds non-finite values")
    return prepared


def declared_size_problem(rows: int, cols: int, frames: int, max_pixels: int) -> str | None:
    """The refusal message when the declared size (rows x columns x frames) exceeds ``max_pixels``; else None."""
    if rows * cols * frames > max_pixels:
        return f"image too large: {rows}x{cols}x{frames} exceeds {max_pixels} pixels"
    return None


def to_model_input(image: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """Area-resize a [0,1] grey image to (H, W) and copy it to 3 channels: float32 (3, H, W)."""
    h, w = input_size
    resized = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    return np.repeat(resized[None], 3, axis=0).astype(np.float32)

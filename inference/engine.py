"""The segmentation engine: a loaded model and ``predict`` from a prepared image to labels and figures.

Softmax is taken at model resolution, the class probabilities are resized back to the image's native
size (bilinear) and the label is their argmax. The engine also runs the horizontally flipped image in the
same batch; the flipped prediction, flipped back, gives a named *flip agreement* (Dice/Jaccard between the
two predictions) - a stability signal, not an accuracy.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from inference.classes import FOREGROUND, NUM_CLASSES, SpineClass
from inference.metrics import overlap
from inference.model_card import ModelCard
from inference.onnx_runtime import OnnxRunner, default_runtime, prepare_onnx
from inference.preprocess import PreparedImage, to_model_input

log = logging.getLogger(__name__)

SPINE = "Spine"  # figures of the union V or T1 (the SEG's "Spine" segment)


@dataclass
class ClassStats:
    """Figures for one class of one prediction."""

    pixels: int
    coverage_percent: float
    area: float  # mm2 when a spacing is known, else pixels
    area_unit: str  # "mm2" or "pixels"
    mean_confidence: float | None  # mean max-softmax over the class's pixels
    flip_dice: float | None = None  # agreement with the flipped-input prediction
    flip_jaccard: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class Prediction:
    labels: np.ndarray  # uint8 (rows, columns), SpineClass values
    confidence: np.ndarray  # float32 max-softmax per pixel
    classes: dict[str, ClassStats]
    model: str
    model_version: str
    demo: bool
    inference_ms: float
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "model_version": self.model_version,
            "demo": self.demo,
            "inference_ms": round(self.inference_ms, 1),
            "image_size": list(self.labels.shape),
            "classes": {k: v.to_json() for k, v in self.classes.items()},
            "notes": self.notes,
        }


def load_module(card: ModelCard) -> torch.nn.Module:
    from inference.architectures import build_model  # segmentation-models-pytorch and timm: seconds to import

    module = build_model(card.architecture, card.encoder)
    state = torch.load(card.weights_path, map_location="cpu", weights_only=True)
    module.load_state_dict(state, strict=True)
    return module.eval()


class Engine:
    """One model, loaded once and kept warm; thread-safe ``predict``.

    ``runtime`` is ``"onnx"`` (ONNX Runtime on a checked export, ``inference.onnx_runtime``; torch if
    that fails) or ``"torch"``. By default ``$SPINENODE_RUNTIME`` or ``onnx`` - except for an engine
    built around a module in hand (training's evaluation), which stays on torch unless asked.
    ``runtime_info`` says which runtime is used, the recorded numerical check and any fallback reason.
    """

    def __init__(self, card: ModelCard, module: torch.nn.Module | None = None, runtime: str | None = None) -> None:
        self.card = card
        if runtime is None:
            runtime = "torch" if module is not None else default_runtime()
        self.module = module if module is not None else load_module(card)
        self.module.eval()
        self._lock = threading.Lock()
        offsets = card.logit_offsets or [0.0] * NUM_CLASSES
        self._offsets = torch.tensor(offsets, dtype=torch.float32).view(1, -1, 1, 1)
        self._onnx: OnnxRunner | None = None
        self.runtime_info: dict[str, Any] = {"runtime": "torch", "requested": runtime}
        if runtime == "onnx":
            self._onnx, self.runtime_info = prepare_onnx(card, self.module)

    @property
    def runtime(self) -> str:
        return "onnx" if self._onnx is not None else "torch"

    def logits(self, batch: np.ndarray, runtime: str | None = None) -> torch.Tensor:
        """Raw logits (N, C, H, W) of a (N, 3, H, W) float32 batch, on this engine's runtime (or torch)."""
        with self._lock, torch.inference_mode():
            if self._onnx is not None and runtime != "torch":
                return torch.from_numpy(self._onnx(batch))
            return self.module(torch.from_numpy(batch))

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Softmax (N, C, H, W) at model resolution for a (N, 3, H, W) batch (logit offsets applied)."""
        logits = self.logits(batch)
        with torch.inference_mode():
            return torch.softmax(logits + self._offsets, dim=1).numpy()

    def predict(
        self, prepared: PreparedImage, spacing_mm: tuple[float, float] | None = None, flip_agreement: bool = True
    ) -> Prediction:
        start = time.perf_counter()
        rows, cols = prepared.shape
        x = to_model_input(prepared.image, self.card.input_size)
        batch = np.stack([x, x[:, :, ::-1]]) if flip_agreement else x[None]
        probs = self.probabilities(np.ascontiguousarray(batch))
        labels, conf = labels_at_native(probs[0], (rows, cols))
        flipped = labels_at_native(probs[1][:, :, ::-1], (rows, cols))[0] if flip_agreement else None
        classes = class_stats(labels, conf, spacing_mm, flipped)
        elapsed = (time.perf_counter() - start) * 1000
        return Prediction(
            labels, conf, classes, self.card.name, self.card.version, self.card.demo, elapsed, list(prepared.notes)
        )


def labels_at_native(probs: np.ndarray, native: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize (C, h, w) probabilities to (rows, cols) plane by plane; return argmax labels and max prob."""
    rows, cols = native
    planes = [cv2.resize(np.ascontiguousarray(p), (cols, rows), interpolation=cv2.INTER_LINEAR) for p in probs]
    best = planes[0].copy()
    labels = np.zeros((rows, cols), np.uint8)
    for c in range(1, len(planes)):
        better = planes[c] > best
        labels[better] = c
        np.maximum(best, planes[c], out=best)
    return labels, best


def class_stats(
    labels: np.ndarray,
    confidence: np.ndarray,
    spacing_mm: tuple[float, float] | None,
    flipped: np.ndarray | None = None,
) -> dict[str, ClassStats]:
    total = labels.size
    pixel_area = spacing_mm[0] * spacing_mm[1] if spacing_mm else None
    out: dict[str, ClassStats] = {}
    # V and T1, and "Spine" (V or T1: the whole column, the SEG's first segment)
    regions = [(c.name, labels == c, None if flipped is None else flipped == c) for c in FOREGROUND]
    regions.append((SPINE, labels > 0, None if flipped is None else flipped > 0))
    for name, m, fm in regions:
        n = int(np.count_nonzero(m))
        stats = ClassStats(
            pixels=n,
            coverage_percent=100.0 * n / total,
            area=n * pixel_area if pixel_area else float(n),
            area_unit="mm2" if pixel_area else "pixels",
            mean_confidence=float(confidence[m].mean()) if n else None,
        )
        if fm is not None:
            ov = overlap(m, fm)
            stats.flip_dice, stats.flip_jaccard = ov.dice, ov.iou
        out[name] = stats
    return out


__all__ = ["ClassStats", "Engine", "Prediction", "SpineClass", "class_stats", "labels_at_native", "load_module"]

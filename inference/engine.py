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
from typing import Any

import numpy as np
import torch

from inference.classes import NUM_CLASSES, SpineClass
from inference.model_card import ModelCard
from inference.onnx_runtime import OnnxRunner, default_runtime, prepare_onnx
from inference.prediction import ClassStats, Prediction, class_stats, labels_at_native
from inference.preprocess import PreparedImage, to_model_input

log = logging.getLogger(__name__)


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


__all__ = ["ClassStats", "Engine", "Prediction", "SpineClass", "class_stats", "labels_at_native", "load_module"]

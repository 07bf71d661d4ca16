"""The segmentation engine: a loaded model and ``predict`` from a prepared image to labels and figures.

Softmax is taken at model resolution, the class probabilities are resized back to the image's native
size (bilinear) and the label is their argmax. The engine also runs the horizontally flipped image in the
same batch; the flipped prediction, flipped back, gives a named *flip agreement* (Dice/Jaccard between the
result and the mirror's own prediction) - a stability signal, not an accuracy. For a card with
``mirror_average`` the result itself is taken from the mean of the image's and the (flipped back) mirror's
class probabilities, the usual flip test-time augmentation (no extra forward pass), and the second pass's
T1 window is averaged with its own mirror image too (``inference.top_pass``); the card's validation figures
are measured that way. Without the mirror pass (``flip_agreement=False``) neither average is taken.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from inference.analysis.levels import LEVEL_CLASS_ORDER, group_probabilities, native_levels
from inference.analysis.measure import measure, reportable
from inference.classes import SpineClass
from inference.model_card import ModelCard, find_card
from inference.onnx_runtime import OnnxRunner, prepare_onnx
from inference.prediction import ClassStats, Prediction, class_stats, labels_at_native
from inference.preprocess import PreparedImage, to_model_input
from inference.quality import QualityThresholds, assess
from inference.settings import DEFAULT_CACHE_DIR, DEFAULT_MODEL_THREADS, DEFAULT_RUNTIME, checked_runtime
from inference.top_pass import second_pass, spine_labels

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def load_module(card: ModelCard) -> torch.nn.Module:
    import torch

    from inference.networks.architectures import build_model  # segmentation-models-pytorch and timm: seconds to import

    module = build_model(card.architecture, card.encoder, classes=len(card.class_order))
    state = torch.load(card.weights_path, map_location="cpu", weights_only=True)
    module.load_state_dict(state, strict=True)
    return module.eval()


class ForwardClock:
    """The time spent in the models' forward passes (with their softmax) during one prediction."""

    def __init__(self) -> None:
        self.ms = 0.0

    def run(self, forward: Callable[[np.ndarray], np.ndarray], batch: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            return forward(batch)
        finally:
            self.ms += (time.perf_counter() - t0) * 1000


class Engine:
    """One model, loaded once and kept warm; thread-safe ``predict``.

    ``runtime`` is ``"onnx"`` (ONNX Runtime on a checked export, ``inference.onnx_runtime``; torch if
    that fails) or ``"torch"``. By default ``onnx`` - except for an engine built around a module in hand
    (training's evaluation), which stays on torch unless asked. ``cache_dir`` keeps the checked exports.
    ``runtime_info`` says which runtime is used, the recorded numerical check and any fallback reason.
    On ONNX Runtime with a cached export the torch module is not loaded (nor PyTorch imported) until
    something asks for it (``module``, ``logits(..., "torch")``).
    """

    def __init__(
        self,
        card: ModelCard,
        module: torch.nn.Module | None = None,
        runtime: str | None = None,
        cache_dir: Path = DEFAULT_CACHE_DIR,
        threads: int = DEFAULT_MODEL_THREADS,
    ) -> None:
        self.card = card
        runtime = checked_runtime(runtime or ("torch" if module is not None else DEFAULT_RUNTIME))
        self._module = module.eval() if module is not None else None
        self._lock = threading.Lock()
        offsets = card.logit_offsets or [0.0] * len(card.class_order)
        self._offsets = np.asarray(offsets, np.float32).reshape(1, -1, 1, 1)
        self._levels = tuple(card.class_order) == LEVEL_CLASS_ORDER  # 19 level classes, grouped to F/V/T1
        self.thresholds = QualityThresholds.from_card(card.quality_thresholds)
        self._onnx: OnnxRunner | None = None
        self.runtime_info: dict[str, Any] = {"runtime": "torch", "requested": runtime}
        if runtime == "onnx":
            self._onnx, self.runtime_info = prepare_onnx(card, lambda: self.module, cache_dir, threads)
            if self._onnx is not None and module is None:
                self._module = None  # exported and checked: the torch weights are not kept (reloaded if asked)
        if self._onnx is None and self._module is None:  # on torch: load now, not on the first image
            self._module = load_module(card)
        self._top: Engine | None = None  # the T1 second pass (inference.top_pass), from the same directory
        if card.top_pass and card.directory is not None:
            top = find_card(card.top_pass, card.directory.parent, part=True)
            self._top = Engine(top, runtime=runtime, cache_dir=cache_dir, threads=threads)

    @property
    def module(self) -> torch.nn.Module:
        """The PyTorch module (loaded on first use when the engine runs on ONNX Runtime)."""
        if self._module is None:
            self._module = load_module(self.card)
        return self._module

    @property
    def runtime(self) -> str:
        return "onnx" if self._onnx is not None else "torch"

    def logits(self, batch: np.ndarray, runtime: str | None = None) -> np.ndarray:
        """Raw logits (N, C, H, W) of a (N, 3, H, W) float32 batch, on this engine's runtime (or torch)."""
        with self._lock:
            if self._onnx is not None and runtime != "torch":
                return self._onnx(batch)
            import torch

            with torch.inference_mode():
                return self.module(torch.from_numpy(batch)).numpy()

    def class_probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Softmax (N, C, H, W) over the model's own classes (``card.class_order``), logit offsets applied."""
        z = self.logits(batch) + self._offsets  # a new float32 array: normalised in place
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Softmax (N, 3, H, W) in SpineClass order (F, V, T1) at model resolution for a (N, 3, H, W) batch."""
        return group_probabilities(self.class_probabilities(batch), self.card.class_order)

    def predict(
        self, prepared: PreparedImage, spacing_mm: tuple[float, float] | None = None, flip_agreement: bool = True
    ) -> Prediction:
        start = time.perf_counter()
        rows, cols = prepared.shape
        x = to_model_input(prepared.image, self.card.input_size)
        batch = np.stack([x, x[:, :, ::-1]]) if flip_agreement else x[None]
        clock = ForwardClock()
        own = clock.run(self.class_probabilities, np.ascontiguousarray(batch))
        average = flip_agreement and self.card.mirror_average
        if average:  # the image's probabilities become the mean with the flipped-back mirror's (in place)
            own[0] += own[1][:, :, ::-1]
            own[0] *= 0.5
        probs = group_probabilities(own, self.card.class_order)
        labels, conf = labels_at_native(probs[0], (rows, cols))
        levels = native_levels(own[0], labels) if self._levels else None
        # the flipped branch runs in mirrored coordinates (second pass included) and is flipped back
        mirrored = labels_at_native(probs[1], (rows, cols))[0] if flip_agreement else None
        if self._top is not None and levels is not None:
            images, firsts = [prepared.image], [levels]
            if mirrored is not None:
                images.append(np.ascontiguousarray(prepared.image[:, ::-1]))
                firsts.append(native_levels(own[1], mirrored))
            top = self._top
            refined = second_pass(lambda b: clock.run(top.probabilities, b), images, firsts, average)
            if refined[0] is not None:
                levels, t1_probability = refined[0]
                labels = spine_labels(levels)
                t1 = labels == int(SpineClass.T1)
                conf[t1] = t1_probability[t1]  # refined T1 pixels: the second pass's confidence
            if mirrored is not None and refined[1] is not None:
                mirrored = spine_labels(refined[1][0])
        flipped = mirrored[:, ::-1] if mirrored is not None else None
        classes = class_stats(labels, conf, spacing_mm, flipped)
        quality = assess(labels, classes, self.thresholds)
        measured = None
        if levels is not None and quality.reliable:  # only what this model is validated to measure
            measured = reportable(measure(levels), self.card.metrics)
        elapsed = (time.perf_counter() - start) * 1000
        return Prediction(
            labels,
            conf,
            classes,
            self.card.name,
            self.card.version,
            self.card.demo,
            elapsed,
            list(prepared.notes),
            quality=quality,
            levels=levels,
            measurements=measured,
            forward_ms=clock.ms,
        )


__all__ = [
    "ClassStats",
    "Engine",
    "ForwardClock",
    "Prediction",
    "SpineClass",
    "class_stats",
    "labels_at_native",
    "load_module",
]

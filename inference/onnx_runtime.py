"""Production inference on ONNX Runtime, exported from the PyTorch model at load time and checked.

A model card's torch module is exported to ONNX (opset ``OPSET``, dynamic batch axis) into a cache
directory (``InferenceSettings.cache_dir``, default ``~/.cache/spinenode/onnx``) as
``<name>-<sha256 prefix>.onnx``, where the hash covers the weights, the architecture, the input size
and the exporter's versions. Before first use the export is checked numerically against torch on a few
phantoms (and their mirror images, as the engine runs them): the largest absolute logit difference and
the agreement of the per-pixel argmax (after the card's logit offsets) must pass ``MAX_ABS_LOGIT_DIFF`` and
``MIN_ARGMAX_AGREEMENT``. The check is kept in ``<same name>.check.json`` beside the ``.onnx``; a later
load with the same key reuses both and exports nothing - without importing PyTorch: the key is computed
from the weights file's SHA-256 and the versions of the packages, so a node whose exports are cached runs on
ONNX Runtime alone (hundreds of MB less memory, seconds less start-up).

When the export, the check or the session fails, the engine stays on torch; the reason is logged as a
warning and kept in the engine's ``runtime_info``. The runtime ``torch`` (``InferenceSettings.runtime``)
selects torch outright.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from inference.model_card import ModelCard, sha256_of
from inference.preprocess import to_model_input
from inference.settings import DEFAULT_CACHE_DIR, DEFAULT_MODEL_THREADS

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

OPSET = 17
CHECK_SEEDS = (910000, 910001, 910002)  # phantoms of the numerical check (never used in training)
CHECK_HEIGHT = 768
MAX_ABS_LOGIT_DIFF = 1e-2
MIN_ARGMAX_AGREEMENT = 0.999


@dataclass
class OnnxCheck:
    """The recorded numerical comparison of the ONNX export with the torch module."""

    phantoms: list[int]
    images: int  # phantoms and their mirror images
    max_abs_logit_diff: float
    argmax_agreement: float
    passed: bool
    limits: dict[str, float]
    opset: int
    torch_version: str
    onnxruntime_version: str
    export_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _cache_key(card: ModelCard) -> str:
    """The weights file as it is on disk (not what the card says), the architecture, the input size and the
    exporter's versions."""
    digest = hashlib.sha256(sha256_of(card.weights_path).encode())
    meta = [card.architecture, card.encoder, list(card.input_size), OPSET, version("torch"), version("onnxruntime")]
    digest.update(json.dumps(meta).encode())
    return digest.hexdigest()[:16]


def _check_batch(card: ModelCard) -> tuple[np.ndarray, list[int]]:
    from inference.data.phantom import make_phantom, unit_image

    xs = []
    for seed in CHECK_SEEDS:
        x = to_model_input(unit_image(make_phantom(seed, height=CHECK_HEIGHT)), card.input_size)
        xs += [x, x[:, :, ::-1]]
    return np.ascontiguousarray(np.stack(xs)), list(CHECK_SEEDS)


def export_onnx(module: torch.nn.Module, input_size: tuple[int, int]) -> bytes:
    import torch

    buf = io.BytesIO()
    example = torch.rand(2, 3, *input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
    return buf.getvalue()


def ort_session(model: bytes | str, threads: int = DEFAULT_MODEL_THREADS) -> Any:
    """A CPU session: ``threads`` intra-op threads, one operator after another."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _compare(session: Any, module: torch.nn.Module, card: ModelCard, export_s: float) -> OnnxCheck:
    import onnxruntime
    import torch

    batch, seeds = _check_batch(card)
    with torch.inference_mode():
        ref = module(torch.from_numpy(batch)).numpy()
    got = session.run(None, {"image": batch})[0]
    offsets = np.asarray(card.logit_offsets or [0.0] * ref.shape[1], np.float32).reshape(1, -1, 1, 1)
    agreement = float(np.mean((ref + offsets).argmax(1) == (got + offsets).argmax(1)))
    diff = float(np.max(np.abs(ref - got)))
    return OnnxCheck(
        phantoms=seeds,
        images=len(batch),
        max_abs_logit_diff=diff,
        argmax_agreement=agreement,
        passed=bool(diff <= MAX_ABS_LOGIT_DIFF and agreement >= MIN_ARGMAX_AGREEMENT),
        limits={"max_abs_logit_diff": MAX_ABS_LOGIT_DIFF, "min_argmax_agreement": MIN_ARGMAX_AGREEMENT},
        opset=OPSET,
        torch_version=torch.__version__,
        onnxruntime_version=onnxruntime.__version__,
        export_s=round(export_s, 2),
    )


class OnnxRunner:
    """An ONNX Runtime session for one model: ``runner(batch)`` -> logits (N, C, H, W) as numpy."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"image": batch})[0]


def prepare_onnx(
    card: ModelCard,
    module: Callable[[], torch.nn.Module],
    cache_dir: Path = DEFAULT_CACHE_DIR,
    threads: int = DEFAULT_MODEL_THREADS,
) -> tuple[OnnxRunner | None, dict[str, Any]]:
    """The checked ONNX Runtime session for ``card`` (taken from ``cache_dir``, or exported from the torch
    module that ``module()`` loads - only then), and what happened.

    Returns ``(None, info)`` with ``info["fallback_reason"]`` when torch must be used instead.
    """
    info: dict[str, Any] = {"runtime": "torch", "requested": "onnx"}
    try:
        key = _cache_key(card)
        directory = cache_dir.expanduser()
        path = directory / f"{card.name}-{key}.onnx"
        check_path = path.with_suffix(".check.json")
        info.update({"onnx_path": str(path), "cache_hit": False})
        if path.is_file() and check_path.is_file():
            check = OnnxCheck(**json.loads(check_path.read_text()))
            info["check"] = check.to_json()
            if not check.passed:
                raise RuntimeError(f"recorded numerical check failed ({check_path})")
            runner = OnnxRunner(ort_session(str(path), threads))
            info.update({"runtime": "onnx", "cache_hit": True})
            return runner, info
        torch_module = module()
        t0 = time.perf_counter()
        model = export_onnx(torch_module, card.input_size)
        session = ort_session(model, threads)
        check = _compare(session, torch_module, card, time.perf_counter() - t0)
        info["check"] = check.to_json()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for target, data in ((path, model), (check_path, (json.dumps(check.to_json(), indent=2) + "\n").encode())):
                tmp = target.with_name(target.name + f".tmp{os.getpid()}")
                tmp.write_bytes(data)
                tmp.replace(target)
        except OSError as exc:  # a read-only cache costs a re-export next time, nothing else
            log.warning("model %s: cannot cache the ONNX export in %s: %s", card.name, directory, exc)
            info["onnx_path"] = None
        if not check.passed:
            raise RuntimeError(
                f"numerical check failed: max |dlogit| {check.max_abs_logit_diff:.3g}, "
                f"argmax agreement {check.argmax_agreement:.5f}"
            )
        info["runtime"] = "onnx"
        return OnnxRunner(session), info
    except Exception as exc:  # noqa: BLE001 - any failure of the fast path leaves the model on torch, said loudly
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("model %s: ONNX Runtime not used, falling back to torch (%s)", card.name, reason)
        info["fallback_reason"] = reason
        return None, info


__all__ = ["OnnxCheck", "OnnxRunner", "prepare_onnx"]

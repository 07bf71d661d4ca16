"""Import a seed app checkpoint (``.pth``) as a SpineNode model: ``models/<name>/weights.pt`` plus ``model.json``.

The checkpoint is read with ``weights_only=True`` (no arbitrary code runs), its architecture is recognised from
its keys and shapes (``inference.networks.seed_models.identify_state_dict``), and it is loaded with ``strict=True`` into
the matching module before anything is written, so an imported model is known to load in the engine.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from inference.model_card import WEIGHTS_FILE, ModelCard, sha256_of
from inference.networks.architectures import build_model
from inference.networks.seed_models import SEED_INPUT_SIZES, identify_state_dict

SEED_ENCODERS: dict[str, str | None] = {
    "seed_deeplabv3_resnet50": "resnet50",
    "seed_unetpp": None,
    "seed_dense_decoder": "resnet50",
}
SEED_PREPROCESSING = (
    "grey x3 /255, no mean/std (seed app convention); here: grey in [0,1] after modality LUT and VOI window "
    "(MONOCHROME1 inverted), area resize, grey x3"
)
WRAPPER_KEYS = ("state_dict", "model_state_dict")
DATA_PARALLEL_PREFIX = "module."


class ImportCheckpointError(ValueError):
    """The file cannot be imported: unreadable, or not one of the seed app's checkpoint layouts."""


def _read(path: Path) -> Any:
    if not path.is_file():
        raise ImportCheckpointError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own message advises weights_only=False, which would run arbitrary code: keep only the cause.
        cause = str(exc).rpartition("WeightsUnpickler error:")[2].strip().splitlines()
        detail = cause[0] if cause and cause[0] else "corrupt, or not a PyTorch file"
        raise ImportCheckpointError(
            f"{path}: not readable as a tensors-only PyTorch checkpoint ({detail}); "
            "files holding other Python objects are not loaded, for safety"
        ) from exc
    except Exception as exc:  # torch.load also raises zip, runtime and EOF errors for damaged files
        lines = str(exc).strip().splitlines()
        raise ImportCheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({lines[0] if lines else type(exc).__name__})"
        ) from exc


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The bare state_dict in a loaded checkpoint: ``obj`` itself or its ``state_dict``/``model_state_dict``.

    A ``module.`` prefix on every key (left by ``nn.DataParallel``) is removed.
    """
    if not isinstance(obj, Mapping):
        raise ImportCheckpointError(f"{source}: expected a state_dict (a mapping), found {type(obj).__name__}")
    for key in WRAPPER_KEYS:
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not obj:
        raise ImportCheckpointError(f"{source}: the state_dict is empty")
    not_tensors = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if not_tensors:
        shown = ", ".join(repr(k) for k in not_tensors[:3])
        raise ImportCheckpointError(
            f"{source}: not a bare state_dict and no {' / '.join(WRAPPER_KEYS)} entry; "
            f"{len(not_tensors)} entries are not tensors (e.g. {shown})"
        )
    state = dict(obj)
    if all(k.startswith(DATA_PARALLEL_PREFIX) for k in state):
        state = {k[len(DATA_PARALLEL_PREFIX) :]: v for k, v in state.items()}
    return state


def import_checkpoint(
    path: Path, name: str, models_root: Path, display_name: str | None = None, *, overwrite: bool = False
) -> ModelCard:
    """Import the seed checkpoint at ``path`` as model ``name`` under ``models_root``; return its saved card.

    Refuses to replace an existing model of that name unless ``overwrite``.
    """
    path = Path(path)
    if not name or name in {".", ".."} or Path(name).name != name:
        raise ImportCheckpointError(f"invalid model name {name!r}: use a plain directory name")
    directory = Path(models_root) / name
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise ImportCheckpointError(f"{directory} already exists; choose another name or overwrite")

    state = extract_state_dict(_read(path), str(path))
    try:
        architecture = identify_state_dict(state)
    except ValueError as exc:
        raise ImportCheckpointError(f"{path}: unknown checkpoint layout: {exc}") from exc
    module = build_model(architecture)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # identify_state_dict checked keys and shapes, so this is unexpected
        raise ImportCheckpointError(f"{path}: does not load into {architecture}: {exc}") from exc

    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS_FILE
    torch.save(module.state_dict(), weights)
    card = ModelCard(
        name=name,
        display_name=display_name or name,
        architecture=architecture,
        encoder=SEED_ENCODERS[architecture],
        input_size=SEED_INPUT_SIZES[architecture],
        weights_file=WEIGHTS_FILE,
        weights_sha256=sha256_of(weights),
        demo=False,
        preprocessing=SEED_PREPROCESSING,
        training={"imported_from": str(path), "source": "seed app checkpoint"},
        notes=f"Imported from the seed app checkpoint {path.name} ({architecture}); not trained by SpineNode.",
    )
    card.save(directory)
    return card


__all__ = ["ImportCheckpointError", "extract_state_dict", "import_checkpoint"]

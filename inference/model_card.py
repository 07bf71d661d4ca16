"""Model cards (``models/<name>/model.json``) and the models directory.

The models directory is ``models/`` of the project unless ``SPINENODE_MODELS_DIR`` names another.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from inference.classes import CLASS_NAMES

MODELS_DIR_ENV = "SPINENODE_MODELS_DIR"
PROJECT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
CARD_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"
PREPROCESSING = "grey in [0,1] (DICOM: modality LUT, VOI window, MONOCHROME1 inverted), area resize, grey x3"
DEMO_DISCLAIMER = "Trained on synthetic phantoms only. NOT FOR DIAGNOSTIC USE."
RESEARCH_DISCLAIMER = "Research model, trained on real radiographs (SpineWeb dataset 16). NOT FOR DIAGNOSTIC USE."


def models_dir() -> Path:
    """Where models live: ``$SPINENODE_MODELS_DIR`` or the project's ``models/``."""
    return Path(os.environ.get(MODELS_DIR_ENV) or PROJECT_MODELS_DIR)


@dataclass
class ModelCard:
    name: str
    display_name: str
    architecture: str
    encoder: str | None
    input_size: tuple[int, int]  # (H, W)
    weights_file: str = WEIGHTS_FILE
    weights_sha256: str = ""
    demo: bool = True
    class_order: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    preprocessing: str = PREPROCESSING
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    cpu_forward_ms: float | None = None
    logit_offsets: list[float] | None = None  # per-class offsets added to logits (post-hoc calibration)
    quality_thresholds: dict[str, float] | None = None  # inference.quality.QualityThresholds fitted on validation
    notes: str = ""
    directory: Path | None = field(default=None, compare=False, repr=False)

    @property
    def weights_path(self) -> Path:
        assert self.directory is not None, "card has no directory"
        return self.directory / self.weights_file

    @property
    def disclaimer(self) -> str:
        """What every output of this model says about its use (always "NOT FOR DIAGNOSTIC USE")."""
        return DEMO_DISCLAIMER if self.demo else RESEARCH_DISCLAIMER

    @property
    def version(self) -> str:
        """Short weights identity used as algorithm version and in output UIDs."""
        return self.weights_sha256[:12] or "unversioned"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("directory")
        data["input_size"] = list(self.input_size)
        return data

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        path = directory / CARD_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: Path) -> ModelCard:
        data = json.loads((directory / CARD_FILE).read_text())
        data["input_size"] = tuple(data["input_size"])
        known = {f for f in cls.__dataclass_fields__}
        card = cls(**{k: v for k, v in data.items() if k in known})
        card.directory = directory
        return card


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def list_cards(root: Path | None = None) -> list[ModelCard]:
    root = root or models_dir()
    if not root.is_dir():
        return []
    return [ModelCard.load(p) for p in sorted(root.iterdir()) if (p / CARD_FILE).is_file()]


def find_card(name: str, root: Path | None = None) -> ModelCard:
    root = root or models_dir()
    directory = root / name
    if not (directory / CARD_FILE).is_file():
        known = ", ".join(c.name for c in list_cards(root)) or "none"
        raise KeyError(f"no model {name!r} in {root} (available: {known})")
    return ModelCard.load(directory)

"""Model cards (``models/<name>/model.json``) and the models directory.

The models directory is ``models/`` of the project unless the caller names another
(``InferenceSettings.models_dir``, from ``$SPINENODE_MODELS_DIR`` at the command line).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from inference.classes import CLASS_NAMES
from inference.settings import PROJECT_MODELS_DIR

CARD_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"
PREPROCESSING = "grey in [0,1] (DICOM: modality LUT, VOI window, MONOCHROME1 inverted), area resize, grey x3"
DEMO_DISCLAIMER = "Trained on synthetic phantoms only. NOT FOR DIAGNOSTIC USE."
RESEARCH_DISCLAIMER = "Research model, trained on real radiographs (SpineWeb dataset 16). NOT FOR DIAGNOSTIC USE."


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
    top_pass: str | None = None  # name of the T1 second pass (inference.top_pass) this model's output goes through
    mirror_average: bool = False  # both passes average the image's and the mirror's probabilities (engine)
    notes: str = ""
    role: str = "segmentation"  # SEGMENTATION_ROLE, or "t1-refiner": a second pass, not selectable
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


SEGMENTATION_ROLE = "segmentation"


def list_cards(root: Path | None = None, parts: bool = False) -> list[ModelCard]:
    """The segmentation models in ``root`` (with ``parts``, also the second passes they use)."""
    root = root or PROJECT_MODELS_DIR
    if not root.is_dir():
        return []
    cards = [ModelCard.load(p) for p in sorted(root.iterdir()) if (p / CARD_FILE).is_file()]
    return [c for c in cards if parts or c.role == SEGMENTATION_ROLE]


def find_card(name: str, root: Path | None = None, part: bool = False) -> ModelCard:
    """The segmentation model ``name`` (with ``part``, a second pass); KeyError when there is none."""
    root = root or PROJECT_MODELS_DIR
    directory = root / name
    card = ModelCard.load(directory) if (directory / CARD_FILE).is_file() else None
    if card is None or (card.role != SEGMENTATION_ROLE and not part):
        known = ", ".join(c.name for c in list_cards(root)) or "none"
        what = f"{name!r} is a {card.role} pass, not a segmentation model" if card else f"no model {name!r}"
        raise KeyError(f"{what} in {root} (available: {known})")
    return card

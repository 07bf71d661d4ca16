"""Shared fixtures: a tiny real model, phantom DICOM files, dcmtk peers on loopback.

The peers and waits themselves are ``dicom_node.testing.peers`` (shared with the benchmark); they are
imported here so that test modules take every helper from one place.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dicom_node.testing.peers import StoreSCP, free_port, storescu, wait_port, wait_until
from inference.model_card import WEIGHTS_FILE, ModelCard, sha256_of
from inference.networks.architectures import build_model
from inference.quality import QualityThresholds
from inference.registry import ModelRegistry
from inference.settings import InferenceSettings

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"
TINY_MODEL = "tiny-test-model"
TINY_INPUT = (64, 32)


def require_tool(name: str) -> str:
    """Path of a command-line tool; missing tools fail in CI and skip elsewhere."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI (make test installs it)")
        pytest.skip(f"{name} not installed")
    return path


def npm_ci(folder: Path, timeout: float = 300) -> None:
    """``npm ci`` into ``folder`` unless its node_modules already matches its package-lock.json."""
    npm = require_tool("npm")
    installed = folder / "node_modules" / ".package-lock.json"  # written by npm ci / npm install
    if installed.is_file() and installed.stat().st_mtime >= (folder / "package-lock.json").stat().st_mtime:
        return
    proc = subprocess.run(
        [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def make_tiny_model(
    root: Path, name: str = TINY_MODEL, demo: bool = True, architecture: str = "deeplabv3plus"
) -> ModelCard:
    """A real (randomly initialised, deterministic) small network with a card, in ``root``.

    The default DeepLabV3+ predicts background everywhere; a ``"unetplusplus"`` one predicts all three
    classes in a random pattern (for tests whose figures must not be trivially zero). Its quality checks are
    off (every threshold zero): the plumbing tests need its SEG written, which a real model's card would
    withhold for such a prediction (``inference.quality``; tests with real models check that).
    """
    torch.manual_seed(0)
    module = build_model(architecture, "mobilenet_v2").eval()
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), directory / WEIGHTS_FILE)
    card = ModelCard(
        name=name,
        display_name="Tiny test model",
        architecture=architecture,
        encoder="mobilenet_v2",
        input_size=TINY_INPUT,
        weights_sha256=sha256_of(directory / WEIGHTS_FILE),
        demo=demo,
        notes="random weights, for tests of the plumbing only",
        quality_thresholds=dict.fromkeys(QualityThresholds.__dataclass_fields__, 0.0),
    )
    card.save(directory)
    return card


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory with the tiny model and links to the shipped models."""
    root = tmp_path_factory.mktemp("models")
    make_tiny_model(root)
    for shipped in (PROJECT / "models").iterdir() if (PROJECT / "models").is_dir() else []:
        if (shipped / "model.json").is_file():
            (root / shipped.name).symlink_to(shipped)
    return root


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX export cache for the test session (each model is exported and checked once)."""
    return tmp_path_factory.mktemp("onnx-cache")


def session_models() -> ModelRegistry:
    """A registry of the test session's models and ONNX cache, read from the environment the autouse
    fixture below sets - as the command line reads it (subprocess nodes get the same from it)."""
    return ModelRegistry.from_settings(InferenceSettings.from_environment(os.environ))


@pytest.fixture(autouse=True)
def _models_env(models_root: Path, onnx_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPINENODE_MODELS_DIR", str(models_root))
    monkeypatch.setenv("SPINENODE_CACHE_DIR", str(onnx_cache))
    monkeypatch.delenv("SPINENODE_RUNTIME", raising=False)


@pytest.fixture(scope="session")
def phantom_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three small phantom DX files (seeds 900000..900002, never used in training)."""
    from inference.data.phantom import make_phantom
    from inference.data.phantom_dicom import phantom_to_dataset

    out = tmp_path_factory.mktemp("phantoms")
    paths = []
    for seed in range(900000, 900003):
        ds = phantom_to_dataset(make_phantom(seed, height=640))
        path = out / f"phantom-{seed}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def dest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCP]:
    """One storescp destination shared by a test module's node."""
    require_tool("storescp")
    scp = StoreSCP(tmp_path_factory.mktemp("dest") / "received")
    yield scp
    scp.stop()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    require_tool("storescp")
    scp = StoreSCP(tmp_path / "received")
    yield scp
    scp.stop()


__all__ = ["StoreSCP", "free_port", "storescu", "wait_port", "wait_until"]

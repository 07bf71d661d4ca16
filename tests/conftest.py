"""Shared fixtures: free ports, a tiny real model, phantom DICOM files, dcmtk peers on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from inference.architectures import build_model
from inference.model_card import WEIGHTS_FILE, ModelCard, sha256_of
from inference.quality import QualityThresholds

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"
TINY_MODEL = "tiny-test-model"
TINY_INPUT = (64, 32)


def free_port() -> int:
    """A TCP port nobody listens on right now (bind to port 0 and read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


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


@pytest.fixture(autouse=True)
def _models_env(models_root: Path, onnx_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPINENODE_MODELS_DIR", str(models_root))
    monkeypatch.setenv("SPINENODE_CACHE_DIR", str(onnx_cache))
    monkeypatch.delenv("SPINENODE_RUNTIME", raising=False)


@pytest.fixture(scope="session")
def phantom_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three small phantom DX files (seeds 900000..900002, never used in training)."""
    from inference.phantom import make_phantom
    from inference.phantom_dicom import phantom_to_dataset

    out = tmp_path_factory.mktemp("phantoms")
    paths = []
    for seed in range(900000, 900003):
        ds = phantom_to_dataset(make_phantom(seed, height=640))
        path = out / f"phantom-{seed}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


class StoreSCP:
    """dcmtk ``storescp`` on loopback, writing what it receives into a folder."""

    def __init__(self, folder: Path, ae_title: str = "DEST", extra: tuple[str, ...] = ()) -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                require_tool("storescp"),
                "--aetitle",
                ae_title,
                "--output-directory",
                str(folder),
                "--accept-all",
                *extra,
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        wait_for_port(self.port)

    @property
    def destination(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def wait_for_files(self, n: int, timeout: float = 60.0) -> list[Path]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.files()) >= n:
                time.sleep(0.2)
                return self.files()
            time.sleep(0.1)
        raise TimeoutError(f"storescp received {len(self.files())} of {n} files")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def dest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCP]:
    """One storescp destination shared by a test module's node."""
    scp = StoreSCP(tmp_path_factory.mktemp("dest") / "received")
    yield scp
    scp.stop()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    scp = StoreSCP(tmp_path / "received")
    yield scp
    scp.stop()


def storescu(
    port: int, *files: Path, called: str = "SPINENODE", calling: str = "STORESCU", extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Send files with dcmtk ``storescu``; returns the completed process (its output holds the statuses)."""
    return subprocess.run(
        [
            require_tool("storescu"),
            "-v",
            "-aet",
            calling,
            "-aec",
            called,
            *extra,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TCP_NODELAY": "1"},
    )

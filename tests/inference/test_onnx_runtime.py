"""ONNX Runtime as the production runtime: agreement with torch, the recorded check, the cache, fallback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from inference import onnx_runtime
from inference.engine import Engine
from inference.model_card import ModelCard, find_card
from inference.preprocess import PreparedImage, from_dataset
from inference.registry import ModelRegistry
from inference.settings import InferenceSettings, RuntimeSelectionError
from tests.conftest import make_tiny_model


@pytest.fixture(scope="module")
def busy_card(tmp_path_factory: pytest.TempPathFactory) -> ModelCard:
    """A tiny U-Net++ that predicts all three classes (so agreement is not trivially all background)."""
    return make_tiny_model(tmp_path_factory.mktemp("busy-models"), "tiny-busy", architecture="unetplusplus")


def test_onnx_engine_agrees_with_torch_and_records_the_check(
    busy_card: ModelCard, phantom_files: list[Path], onnx_cache: Path
) -> None:
    onnx = Engine(busy_card, runtime="onnx", cache_dir=onnx_cache)
    torch_engine = Engine(busy_card, runtime="torch")
    assert onnx.runtime == "onnx" and torch_engine.runtime == "torch"
    check = onnx.runtime_info["check"]
    assert check["passed"] and check["argmax_agreement"] >= 0.999 and check["max_abs_logit_diff"] < 1e-2
    onnx_path = Path(onnx.runtime_info["onnx_path"])
    assert onnx_path.is_file() and onnx_path.name.startswith("tiny-busy-")
    assert json.loads(onnx_path.with_suffix(".check.json").read_text()) == check
    for path in phantom_files:
        ds = dcmread(path)
        a = onnx.predict(from_dataset(ds), (0.2, 0.2))
        b = torch_engine.predict(from_dataset(ds), (0.2, 0.2))
        assert len(np.unique(b.labels)) == 3
        assert np.mean(a.labels == b.labels) >= 0.999
        assert np.abs(a.confidence - b.confidence).max() < 1e-3
        for name, stats in b.classes.items():
            assert abs(a.classes[name].pixels - stats.pixels) <= 0.001 * b.labels.size


def test_second_load_reuses_the_cached_export(
    busy_card: ModelCard, monkeypatch: pytest.MonkeyPatch, onnx_cache: Path
) -> None:
    first = Engine(busy_card, runtime="onnx", cache_dir=onnx_cache)  # exported by the test above or now
    path = Path(first.runtime_info["onnx_path"])
    mtime = path.stat().st_mtime_ns

    def no_export(*_: object) -> bytes:
        raise AssertionError("re-exported despite a cached export")

    def no_torch_model(*_: object) -> object:
        raise AssertionError("the torch model was loaded despite a cached export")

    monkeypatch.setattr(onnx_runtime, "export_onnx", no_export)
    monkeypatch.setattr("inference.engine.load_module", no_torch_model)  # served without PyTorch
    again = Engine(busy_card, runtime="onnx", cache_dir=onnx_cache)
    assert again.runtime == "onnx" and again.runtime_info["cache_hit"] is True
    assert again.predict(PreparedImage(np.random.default_rng(0).random((64, 32), dtype=np.float32))).labels.shape
    assert path.stat().st_mtime_ns == mtime
    assert first._module is None  # a fresh export does not keep the torch weights either


def test_export_failure_falls_back_to_torch(
    busy_card: ModelCard, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_: object) -> bytes:
        raise RuntimeError("exporter broke")

    monkeypatch.setattr(onnx_runtime, "export_onnx", broken)
    engine = Engine(busy_card, cache_dir=tmp_path / "empty-cache")
    assert engine.runtime == "torch"
    assert "exporter broke" in engine.runtime_info["fallback_reason"]
    assert "falling back to torch" in caplog.text
    x = np.random.default_rng(0).random((1, 3, *busy_card.input_size), dtype=np.float32)
    assert engine.probabilities(x).shape == (1, 3, *busy_card.input_size)


def test_failed_check_falls_back(busy_card: ModelCard, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_runtime, "MAX_ABS_LOGIT_DIFF", -1.0)  # nothing can pass
    engine = Engine(busy_card, cache_dir=tmp_path / "cache")
    assert engine.runtime == "torch" and "numerical check failed" in engine.runtime_info["fallback_reason"]
    again = Engine(
        busy_card, cache_dir=tmp_path / "cache"
    )  # the recorded failure is not re-exported, and still falls back
    assert again.runtime == "torch" and "recorded numerical check failed" in again.runtime_info["fallback_reason"]


def test_runtime_is_selectable(models_root: Path, onnx_cache: Path) -> None:
    card = find_card("tiny-test-model", models_root)
    assert Engine(card, runtime="torch").runtime == "torch"
    with pytest.raises(RuntimeSelectionError):
        Engine(card, runtime="tensorflow")
    assert Engine(card, cache_dir=onnx_cache).runtime == "onnx"  # the default


def test_settings_come_from_the_environment_at_the_entry_point(tmp_path: Path) -> None:
    settings = InferenceSettings.from_environment(
        {"SPINENODE_MODELS_DIR": str(tmp_path), "SPINENODE_RUNTIME": " Torch ", "SPINENODE_CACHE_DIR": "~/c"}
    )
    assert settings == InferenceSettings(tmp_path, "torch", Path("~/c").expanduser())
    assert InferenceSettings.from_environment({}) == InferenceSettings()
    with pytest.raises(RuntimeSelectionError, match="SPINENODE_RUNTIME='tensorflow'"):
        InferenceSettings.from_environment({"SPINENODE_RUNTIME": "tensorflow"})
    registry = ModelRegistry.from_settings(settings)
    assert (registry.root, registry.runtime, registry.cache_dir) == (tmp_path, "torch", settings.cache_dir)

"""The seed app's checkpoint layouts: our modules must match the manifests key for key, shape for shape, in order."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from inference.data.importer import ImportCheckpointError, import_checkpoint
from inference.engine import load_module
from inference.model_card import ModelCard, sha256_of
from inference.networks.architectures import build_model
from inference.networks.seed_models import SEED_BUILDERS, SEED_INPUT_SIZES, identify_state_dict

SEED_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "seed-checkpoints"
MANIFESTS = {
    "seed_deeplabv3_resnet50": "deeplab_resnet50.json",
    "seed_unetpp": "model_unetpp_spine_t1.json",
    "seed_dense_decoder": "deeplab_dense_decoder.json",
}
SEEDS = list(MANIFESTS)

needs_manifests = pytest.mark.skipif(
    not SEED_DIR.is_dir(), reason=f"seed checkpoint manifests not found at {SEED_DIR} (../shared beside the project)"
)


def manifest(arch: str) -> dict[str, Any]:
    return json.loads((SEED_DIR / MANIFESTS[arch]).read_text())


@pytest.fixture(scope="module")
def modules() -> dict[str, torch.nn.Module]:
    return {arch: build_model(arch).eval() for arch in SEEDS}


def test_registry_names() -> None:
    assert set(SEED_BUILDERS) == set(SEEDS) == set(SEED_INPUT_SIZES)


@needs_manifests
@pytest.mark.parametrize("arch", SEEDS)
def test_state_dict_matches_manifest(arch: str, modules: dict[str, torch.nn.Module]) -> None:
    m = manifest(arch)
    got = [(k, tuple(v.shape)) for k, v in modules[arch].state_dict().items()]
    expected = [(k, tuple(shape)) for k, shape in m["state_dict"]]
    assert got == expected
    assert len(got) == m["num_state_dict_entries"]
    assert SEED_INPUT_SIZES[arch] == tuple(m["input_size"])


@needs_manifests
@pytest.mark.parametrize("arch", SEEDS)
def test_parameter_count(arch: str, modules: dict[str, torch.nn.Module]) -> None:
    """The manifest's ``num_params`` counts distinct parameters: the dense decoder's twice-registered backbone
    counts once (as ``parameters()`` does), although its state_dict lists those tensors under two keys each."""
    module = modules[arch]
    distinct = sum(p.numel() for p in module.parameters())
    assert distinct == manifest(arch)["num_params"]
    every_key = sum(p.numel() for _, p in module.named_parameters(remove_duplicate=False))
    if arch == "seed_dense_decoder":
        backbone_without_fc = sum(p.numel() for n, p in module.backbone.named_parameters() if not n.startswith("fc."))
        assert every_key == distinct + backbone_without_fc  # layer0..layer4 alias backbone.conv1/bn1/layer1..4
    else:
        assert every_key == distinct


def test_dense_decoder_aliases_share_tensors(modules: dict[str, torch.nn.Module]) -> None:
    state = modules["seed_dense_decoder"].state_dict()
    assert state["layer0.0.weight"].data_ptr() == state["backbone.conv1.weight"].data_ptr()
    assert state["layer4.2.bn3.running_var"].data_ptr() == state["backbone.layer4.2.bn3.running_var"].data_ptr()


@pytest.mark.parametrize("arch", SEEDS)
def test_strict_round_trip(arch: str, modules: dict[str, torch.nn.Module]) -> None:
    source = modules[arch]
    state = {k: v.clone() for k, v in source.state_dict().items()}
    target = build_model(arch)
    target.load_state_dict(state, strict=True)
    probe = next(k for k in state if k.endswith("running_var"))
    assert torch.equal(target.state_dict()[probe], state[probe])


@pytest.mark.parametrize("arch", ["seed_unetpp", "seed_dense_decoder"])
def test_forward_shape(arch: str, modules: dict[str, torch.nn.Module]) -> None:
    start = time.perf_counter()
    with torch.inference_mode():
        out = modules[arch](torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 3, 64, 64)
    assert torch.isfinite(out).all()
    assert time.perf_counter() - start < 30


@pytest.mark.parametrize("arch", SEEDS)
def test_identify_state_dict(arch: str, modules: dict[str, torch.nn.Module]) -> None:
    assert identify_state_dict(modules[arch].state_dict()) == arch


def test_identify_rejects_near_miss(modules: dict[str, torch.nn.Module]) -> None:
    state = dict(modules["seed_unetpp"].state_dict())
    state.pop("final.bias")
    state["extra.weight"] = torch.zeros(1)
    state["final.weight"] = torch.zeros(2, 32, 1, 1)
    with pytest.raises(ValueError, match="matches none of the seed architectures") as info:
        identify_state_dict(state)
    message = str(info.value)
    assert "closest is 'seed_unetpp'" in message
    assert "final.bias" in message and "extra.weight" in message and "final.weight" in message


def test_import_checkpoint(tmp_path: Path) -> None:
    source = build_model("seed_unetpp")
    checkpoint = tmp_path / "model_unetpp_spine_t1.pth"
    torch.save({"epoch": 3, "model_state_dict": source.state_dict()}, checkpoint)
    root = tmp_path / "models"

    card = import_checkpoint(checkpoint, "seed-unetpp", root, display_name="Seed U-Net++")

    assert (root / "seed-unetpp" / "model.json").is_file()
    saved = ModelCard.load(root / "seed-unetpp")
    assert saved == card
    assert card.architecture == "seed_unetpp" and card.encoder is None
    assert card.input_size == (256, 256) and card.display_name == "Seed U-Net++"
    assert card.demo is False
    assert card.training == {"imported_from": str(checkpoint), "source": "seed app checkpoint"}
    assert "grey x3 /255, no mean/std" in card.preprocessing
    assert card.weights_sha256 == sha256_of(card.weights_path)
    module = load_module(saved)  # what the Engine does: strict load
    for key, value in source.state_dict().items():
        assert torch.equal(module.state_dict()[key], value), key

    with pytest.raises(ImportCheckpointError, match="already exists"):
        import_checkpoint(checkpoint, "seed-unetpp", root)


def test_import_rejects_unknown_layout(tmp_path: Path) -> None:
    checkpoint = tmp_path / "other.pth"
    torch.save(torch.nn.Conv2d(3, 3, 1).state_dict(), checkpoint)
    with pytest.raises(ImportCheckpointError, match="unknown checkpoint layout.*closest is"):
        import_checkpoint(checkpoint, "other", tmp_path / "models")
    assert not (tmp_path / "models" / "other").exists()


def test_import_rejects_unreadable_file(tmp_path: Path) -> None:
    checkpoint = tmp_path / "broken.pth"
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pth"):
        import_checkpoint(checkpoint, "broken", tmp_path / "models")

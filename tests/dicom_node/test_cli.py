"""The ``spinenode`` commands as users run them (separate processes, real files, real peers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pydicom import dcmread

from inference.model_card import find_card
from tests.conftest import PROJECT, TINY_MODEL, StoreSCP
from tests.dciodvfy import dciodvfy_errors

pytestmark = pytest.mark.slow  # the CLI in subprocesses, dcmtk peers


def run(*args: str, models_root: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if models_root is not None:
        env["SPINENODE_MODELS_DIR"] = str(models_root)
    return subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=PROJECT,
    )


def test_phantom_command_writes_valid_dicom_and_pngs(tmp_path: Path) -> None:
    out = run("phantom", "--out", str(tmp_path / "d"), "--n", "2", "--seed", "11")
    assert out.returncode == 0, out.stderr
    files = sorted((tmp_path / "d").glob("*.dcm"))
    assert len(files) == 2 and all(dciodvfy_errors(f) == [] for f in files)
    index = json.loads((tmp_path / "d" / "phantoms.json").read_text())["phantoms"]
    assert {e["seed"] for e in index} == {11, 12} and all("cobb_angle_deg" in json.dumps(e) for e in index)
    assert run("phantom", "--out", str(tmp_path / "p"), "--n", "1", "--format", "png").returncode == 0
    assert len(list((tmp_path / "p").glob("*.png"))) == 2  # image + mask


def test_models_lists_json(models_root: Path) -> None:
    out = run("models", "--json", models_root=models_root)
    assert out.returncode == 0, out.stderr
    models = {m["name"]: m for m in json.loads(out.stdout)}
    assert models[TINY_MODEL]["architecture"] == "deeplabv3plus" and models[TINY_MODEL]["demo"] is True
    assert {"name", "architecture", "encoder", "demo"} <= set(models[TINY_MODEL])


def test_models_import_recognises_seed_checkpoint(tmp_path: Path) -> None:
    from inference.networks.architectures import build_model

    pth = tmp_path / "model_unetpp_spine_t1.pth"
    torch.save(build_model("seed_unetpp").state_dict(), pth)
    root = tmp_path / "models"
    out = run("models", "import", str(pth), "--name", "seed-unetpp", models_root=root)
    assert out.returncode == 0, out.stderr
    card = find_card("seed-unetpp", root)
    assert card.architecture == "seed_unetpp" and card.demo is False
    bad = tmp_path / "junk.pth"
    torch.save({"nothing": torch.zeros(1)}, bad)
    out = run("models", "import", str(bad), "--name", "junk", models_root=root)
    assert out.returncode == 2 and "error" in out.stderr and "Traceback" not in out.stderr


def test_segment_dicom_and_png(tmp_path: Path, phantom_files: list[Path], models_root: Path) -> None:
    out = run(
        "segment", str(phantom_files[0]), "--out", str(tmp_path / "o"), "--model", TINY_MODEL, models_root=models_root
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["model"] == TINY_MODEL and summary["demo"] is True
    for kind in ("seg", "sr", "sc"):
        assert dciodvfy_errors(Path(summary["files"][kind])) == []
    overlay = cv2.imread(summary["files"]["overlay_png"])
    assert overlay.shape[:2] == dcmread(phantom_files[0]).pixel_array.shape
    assert json.loads(Path(summary["files"]["metrics_json"]).read_text())["classes"]["V"]["area_unit"] == "mm2"

    png = tmp_path / "x.png"
    cv2.imwrite(str(png), (np.random.default_rng(0).random((200, 80)) * 255).astype(np.uint8))
    out = run("segment", str(png), "--out", str(tmp_path / "p"), "--model", TINY_MODEL, models_root=models_root)
    assert out.returncode == 0, out.stderr
    files = json.loads(out.stdout)["files"]
    assert set(files) == {"overlay_png", "mask_png", "metrics_json"}
    assert json.loads(out.stdout)["classes"]["V"]["area_unit"] == "pixels"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("segment", "/nonexistent.dcm", "--out", "/tmp/x"), "no such file"),
        (("segment", str(PROJECT / "README.md"), "--out", "/tmp/x", "--model", TINY_MODEL), "neither DICOM"),
        (("evaluate", "--model", "no-such-model", "--phantom", "1"), "no model"),
        (("serve", "--destination", "garbage"), "AE@HOST:PORT"),
        (("audit", "--data-dir", "/nonexistent-dir"), "no audit database"),
    ],
)
def test_clear_cli_errors(args: tuple[str, ...], message: str, models_root: Path) -> None:
    out = run(*args, models_root=models_root)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_evaluate_json(models_root: Path) -> None:
    out = run("evaluate", "--model", TINY_MODEL, "--phantom", "2", "--seed", "777", "--json", models_root=models_root)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["model"] == TINY_MODEL and result["n_images"] == 2
    for cls in ("V", "T1"):
        assert set(result["per_class"][cls]) >= {"iou", "dice", "iou_mean_per_image"}


def test_echo_and_send_against_storescp(tmp_path: Path, phantom_files: list[Path], storescp: StoreSCP) -> None:
    assert run("echo", storescp.destination).returncode == 0
    out = run("send", storescp.destination, *map(str, phantom_files[:2]))
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(storescp.wait_for_files(2)) == 2
    assert run("echo", "NOBODY@127.0.0.1:1").returncode == 2

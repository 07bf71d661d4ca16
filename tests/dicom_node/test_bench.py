"""``spinenode bench --quick``: a smoke test of the benchmark (every figure present and positive; no timing
assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dicom_node.config import DEFAULT_MODEL
from tests.conftest import PROJECT, TINY_MODEL, require_tool, session_models
from tests.radiographs import SHARED_DATA

QUICK_ROWS = 512  # --quick's image height

FIGURES = (
    "sgemm_gflops",
    "model_gflop",
    "forward_ms_median",
    "forward_flip_batch_ms_median",
    "torch_forward_ms_median",
    "achieved_gflops",
    "decode_preprocess_ms",
    "postprocess_ms",
    "build_seg_ms",
    "build_sr_ms",
    "build_sc_ms",
    "encode_ms",
    "send_ms",
    "end_to_end_ms",
    "forward_in_node_ms",
    "overhead_ms",
    "throughput_images_per_min",
    "throughput_cpu_share",
    "throughput_auto_images_per_min",
    "receive_ratio_vs_storescp",
    "peak_rss_mb",
    "cold_start_s",
)


@pytest.mark.slow
def test_bench_quick_json_has_every_figure(models_root: Path, tmp_path: Path) -> None:
    require_tool("storescp")
    require_tool("storescu")
    profiles = tmp_path / "profiles"
    out = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "bench", "--quick", "--json", "--model", TINY_MODEL]
        + ["--profile", str(profiles)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PROJECT,
        env=dict(os.environ),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    for key in FIGURES:
        assert isinstance(result[key], int | float) and result[key] > 0, key
    assert result["runtime"] == "onnx" and result["runtime_info"]["check"]["passed"]
    assert result["end_to_end"]["end_to_end_ms"] == result["end_to_end_ms"]
    assert {"overhead_met", "end_to_end_met", "throughput_met", "cold_start_met"} <= result["targets"].keys()
    assert result["overhead_ms"] < result["end_to_end_ms"] and result["input"].startswith("phantom")
    # --profile: a cProfile breakdown per in-process stage, naming the functions that stage spends its time in
    assert set(result["profiles"]) == {"decode_preprocess", "predict", "build_outputs", "encode"}
    build = Path(result["profiles"]["build_outputs"]).read_text()
    assert "cumulative" in build and "build_segmentation" in build and (profiles / "predict.pstats").is_file()


@pytest.mark.slow
def test_bench_quick_on_real_radiographs(tmp_path: Path) -> None:
    """``--radiographs``: the input is real validation radiographs, the shipped default model segments them."""
    if not SHARED_DATA.is_dir():
        pytest.skip("needs ../shared/data/spineweb16")
    out = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "bench", "--quick", "--json", "--radiographs", str(SHARED_DATA)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=PROJECT,
        env=dict(os.environ),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["input"].startswith("SpineWeb dataset 16 validation radiographs")
    assert result["model"] == DEFAULT_MODEL and result["image_size"][0] == QUICK_ROWS
    assert 0 < result["forward_in_node_ms"] < result["end_to_end_ms"]


@pytest.mark.slow
def test_models_load_and_warm_up_in_the_background(tmp_path: Path) -> None:
    from dicom_node.config import NodeConfig
    from dicom_node.roles.node import Node
    from tests.conftest import free_port

    node = Node.compose(
        NodeConfig(data_dir=tmp_path / "var", port=free_port(), bind="127.0.0.1", model=TINY_MODEL), session_models()
    )
    node.start()  # returns (and accepts associations) while the model loads
    try:
        assert node.warmup is not None and node.receiver.accepting
        node.warmup.join(120)
        (status,) = [m for m in node.models.status() if m["name"] == TINY_MODEL]
        assert status["loaded"] and status["runtime"] == "onnx" and status["onnx_check"]["passed"]
    finally:
        node.stop()
    unknown = Node.compose(
        NodeConfig(data_dir=tmp_path / "var2", port=free_port(), model="no-such-model"), session_models()
    )
    with pytest.raises(KeyError):
        unknown.start()
    unknown.db.dispose()


def test_stand_in_forward_reports_its_share_of_the_sgemm_rate() -> None:
    """The ResNet-50 figure's code path, on a small random-weight model and input (no timing asserted)."""
    from bench.node_bench import stand_in_forward

    m = stand_in_forward("deeplabv3plus", "mobilenet_v2", (64, 32), sgemm=50.0, repeats=2)
    assert m["gflop"] > 0 and m["forward_ms_median"] > 0
    assert m["fraction_of_sgemm"] == round(m["gflop"] / (m["forward_ms_median"] / 1000) / 50.0, 3)

"""``spinenode bench``: one run that measures where the time goes, on this machine, after warm-up.

Figures (medians unless named otherwise; the JSON holds every one, ``--json``):

- ``sgemm_gflops``: a 2-thread float32 matrix product (torch), the machine's baseline;
- ``forward_ms_median``: one image (batch 1) at the model's input size on the production runtime,
  ``forward_flip_batch_ms_median`` the batch of 2 the node runs (image and mirror image),
  ``torch_forward_ms_median`` batch 1 on torch eager; the model's GFLOP (torch's FLOP counter) and the
  achieved fraction of the SGEMM rate;
- ``decode_preprocess_ms``: read the Part 10 file, decode and window it (a ``--height`` rows 16-bit DX: the
  phantom padded to 1300 columns, or with ``--radiographs DIR`` real SpineWeb validation radiographs);
- ``postprocess_ms``: probabilities back to native size, argmax, per-class figures and flip agreement;
  ``predict_ms`` the whole prediction (both passes, measurements, quality flag), ``predict_no_flip_ms``
  the same without the mirror image (a route's ``flip_agreement = false``) and ``flip_agreement_cost_ms``
  the difference;
- ``build_seg_ms``, ``build_sr_ms``, ``build_sc_ms``: each writer; ``encode_ms``: the three as Part 10 (the
  writers are timed on the prediction as if its quality flag held it reliable, so that the SEG and the
  measurement groups are built whatever the benchmark image gives: a cost, never an output);
- ``send_ms``: C-STORE of the three outputs in one association to dcmtk ``storescp``;
- ``end_to_end_ms``: start of the C-STORE (an SCU process holding its association open) to the last output
  accepted by ``storescp``, on an in-process node, with its parts (``bench/latency.py`` prints the same);
  ``forward_in_node_ms`` the forward passes it ran (both passes, image and mirror image) and
  ``overhead_ms`` the rest: the node's own work;
- ``throughput_images_per_min``: 4 concurrent ``storescu`` senders to the node, until every output is
  delivered; ``throughput_cpu_share`` the share of all cores busy meanwhile (this process and the
  senders) and ``throughput_forward_share`` the share of the time a forward pass ran (what limits it);
  ``throughput_auto_*`` the same with one worker process per core (``serve --workers auto``);
- ``receive_ratio_vs_storescp``: the same files stored by the node (no workers) versus by ``storescp``,
  time ratio (1.0: as fast as dcmtk); dcmtk tools run with ``TCP_NODELAY=1``;
- ``peak_rss_mb``: a fresh process with the models loaded (every model in the models directory; with
  ``--quick``, the benchmarked one) after one prediction each;
- ``cold_start_s``: ``spinenode serve`` process start to the first association accepted (C-ECHO).

``--quick`` shrinks every sample (small image, few repeats) for a CI smoke test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.node_run import end_to_end, medians, phantom_files, radiograph_files, start_node, wait_delivered
from bench.report import SENDERS, format_table, targets
from dicom_node.config import cores
from dicom_node.testing.peers import TOOL_ENV, StoreSCP, find_tool, free_port, storescu
from inference.settings import InferenceSettings


def _median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 2)


def sgemm_gflops(threads: int = 2, n: int = 2048, repeats: int = 5) -> float:
    """Float32 matrix product rate with ``threads`` torch threads (GFLOP/s, best of ``repeats``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.rand(n, n), torch.rand(n, n)
        a @ b
        best = min(_timed(lambda: a @ b) for _ in range(repeats))
    finally:
        torch.set_num_threads(before)
    return round(2 * n**3 / best / 1e9, 1)


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def model_gflop(module: Any, input_size: tuple[int, int]) -> float:
    """Forward FLOPs of one image (torch's FLOP counter: 2 per multiply-add of convolutions and matmuls)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        module(torch.rand(1, 3, *input_size))
    return round(counter.get_total_flops() / 1e9, 2)


# the ResNet-50 models, measured as random-weight stand-ins (no shipped weights) at its input size
STAND_INS = (("deeplabv3plus", "resnet50"), ("deeplabv3plus_dense", "resnet50"))
STAND_IN_INPUT = (512, 256)


def stand_in_forward(
    architecture: str, encoder: str, input_size: tuple[int, int], sgemm: float, repeats: int
) -> dict[str, Any]:
    """Batch-1 forward of a random-weight ``architecture``/``encoder`` on ONNX Runtime (the production
    session settings): ms, GFLOP and the fraction of the SGEMM rate ``sgemm`` it achieves."""
    from inference.networks.architectures import build_model
    from inference.onnx_runtime import export_onnx, ort_session

    module = build_model(architecture, encoder).eval()
    gflop = model_gflop(module, input_size)
    session = ort_session(export_onnx(module, input_size))
    x = np.random.default_rng(0).random((1, 3, *input_size), dtype=np.float32)
    name = session.get_inputs()[0].name
    ms = _median_ms(lambda: session.run(None, {name: x}), repeats, warmup=2)
    achieved = gflop / (ms / 1000)
    return {
        "architecture": architecture,
        "encoder": encoder,
        "input_size": list(input_size),
        "gflop": gflop,
        "forward_ms_median": ms,
        "achieved_gflops": round(achieved, 1),
        "fraction_of_sgemm": round(achieved / sgemm, 3),
    }


def peak_rss_mb(models: list[str], settings: InferenceSettings) -> float:
    """Peak RSS (MB) of a fresh process that loads ``models`` and runs one prediction on each.

    Read from ``VmHWM`` (this process's own high-water mark): ``ru_maxrss`` of a child started by a large
    process (this benchmark, with torch and a node loaded) keeps the parent's size from before ``exec``."""
    code = (
        "import resource, sys, numpy as np\n"
        "from pathlib import Path\n"
        "from inference.registry import ModelRegistry\n"
        "from inference.preprocess import PreparedImage\n"
        "r = ModelRegistry(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))\n"
        "for name in sys.argv[4:]:\n"
        "    r.get(name).predict(PreparedImage(np.random.rand(2500, 1300).astype(np.float32)))\n"
        "try:\n"
        "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
        "except OSError:\n"
        "    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(hwm)\n"
    )
    project = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code, str(settings.models_dir), settings.runtime, str(settings.cache_dir), *models],
        capture_output=True,
        text=True,
        check=True,
        cwd=project,
        timeout=900,
    )
    return round(int(out.stdout.strip().splitlines()[-1]) / 1024, 1)


STOP_WAIT_S = 30.0  # for the cold-start node to stop after SIGTERM (it holds no job); then it is a defect


def cold_start_s(model: str, work: Path) -> float:
    """``spinenode serve`` process start to the first accepted association (a C-ECHO), in seconds."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    port = free_port()
    cmd = [sys.executable, "-m", "dicom_node.cli", "serve", "--port", str(port), "--bind", "127.0.0.1"]
    cmd += ["--data-dir", str(work), "--model", model]
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    project = Path(__file__).resolve().parent.parent
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - t0 < 300:
            if proc.poll() is not None:
                raise RuntimeError(f"spinenode serve exited with {proc.returncode}")
            with socket.socket() as s:
                listening = s.connect_ex(("127.0.0.1", port)) == 0
            if listening:
                assoc = ae.associate("127.0.0.1", port, ae_title="SPINENODE")
                if assoc.is_established:
                    elapsed = time.perf_counter() - t0
                    assoc.release()
                    return round(elapsed, 2)
            time.sleep(0.02)
        raise TimeoutError("no association within 300 s")
    finally:
        proc.terminate()
        try:
            proc.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"spinenode serve did not stop within {STOP_WAIT_S:g} s of SIGTERM") from None


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from ``/proc/stat`` (every process: the node's
    worker processes included)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def throughput(node: Any, files: list[Path], jobs_before: int) -> dict[str, float]:
    """``files`` from 4 concurrent ``storescu`` senders until every output is delivered: images/min, the
    share of the machine's cores busy meanwhile, and the share of the time the model was running."""
    groups = [files[i::SENDERS] for i in range(SENDERS)]
    busy0, total0 = cpu_jiffies()
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [find_tool("storescu"), "-aec", "SPINENODE", "127.0.0.1", str(node.port), *map(str, g)],
            env=TOOL_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for g in groups
    ]
    for p in procs:
        p.wait(600)
    wait_delivered(node, jobs_before + len(files))
    elapsed = time.perf_counter() - t0
    busy1, total1 = cpu_jiffies()
    return {
        "throughput_images_per_min": round(len(files) * 60 / elapsed, 1),
        "throughput_cpu_share": round((busy1 - busy0) / max(total1 - total0, 1), 3),
        "throughput_forward_share": round(forward_ms_of_jobs(node, jobs_before) / (elapsed * 1000), 3),
    }


def forward_ms_of_jobs(node: Any, after: int) -> float:
    """The forward time (ms) of the node's jobs after the first ``after``."""
    from sqlalchemy import select

    from dicom_node.audit.records import JobRecord

    with node.db.session() as s:
        jobs = s.scalars(select(JobRecord).where(JobRecord.id > after)).all()
        return float(sum(j.metrics["timings_ms"]["forward"] for j in jobs if j.metrics))


PROFILE_TOP = 40  # functions listed per stage, by cumulative time


def profile_stage(name: str, fn: Callable[[], object], folder: Path) -> str:
    """Run ``fn`` once under cProfile; write ``folder/<name>.txt`` (top functions by cumulative time) and
    ``folder/<name>.pstats`` (for snakeviz, ``python -m pstats``). Returns the text file's path."""
    import cProfile
    import io
    import pstats

    folder.mkdir(parents=True, exist_ok=True)
    profiler = cProfile.Profile()
    profiler.runcall(fn)
    profiler.dump_stats(folder / f"{name}.pstats")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(PROFILE_TOP)
    path = folder / f"{name}.txt"
    path.write_text(out.getvalue())
    return str(path)


def run_bench(
    model: str,
    quick: bool = False,
    height: int | None = None,
    width: int | None = None,
    profile_dir: Path | None = None,
    settings: InferenceSettings | None = None,
    radiographs: Path | None = None,
) -> dict[str, Any]:
    """Every figure of the module docstring. ``radiographs``: the SpineWeb dataset 16 directory; its
    validation radiographs (resized to ``height`` rows) are the input instead of the padded phantom."""
    import torch
    from pydicom import dcmread

    from dicom_node.delivery.associations import send_files
    from dicom_node.storage import dataset_bytes
    from dicom_node.writers.outputs import build_outputs
    from dicom_node.writers.source import pixel_spacing_mm
    from inference.engine import Engine, class_stats, labels_at_native
    from inference.model_card import find_card, list_cards
    from inference.prediction import Quality
    from inference.preprocess import from_dataset, to_model_input

    repeats = 3 if quick else 10
    height = height or (512 if quick else 2500)
    width = width or (256 if quick else 1300)
    result: dict[str, Any] = {
        "model": model,
        "quick": quick,
        "machine": {"cpus": os.cpu_count(), "loadavg_start": [round(x, 2) for x in os.getloadavg()]},
    }
    result["sgemm_gflops"] = sgemm_gflops(n=512 if quick else 2048, repeats=3 if quick else 5)

    settings = settings or InferenceSettings()
    card = find_card(model, settings.models_dir)
    engine = Engine(card, runtime=settings.runtime, cache_dir=settings.cache_dir)
    result["runtime"] = engine.runtime
    result["runtime_info"] = engine.runtime_info
    result["input_size"] = list(card.input_size)
    gflop = model_gflop(engine.module, card.input_size)
    result["model_gflop"] = gflop

    work = Path(tempfile.mkdtemp(prefix="spinenode-bench-"))
    scp: StoreSCP | None = None
    archive: StoreSCP | None = None
    node: Any = None
    try:
        n_seq = 1 + (1 if quick else 6)  # the first image warms the node up and is not counted
        n_files = n_seq + SENDERS * (1 if quick else 3)
        if radiographs is not None:
            files = radiograph_files(radiographs, work / "in", n_files, height)
            result["input"] = f"SpineWeb dataset 16 validation radiographs, {height} rows"
        else:
            files = phantom_files(work / "in", n_files, height, width=width)
            result["input"] = f"phantom DX padded to {height}x{width}"
        ds = dcmread(files[0])
        prepared = from_dataset(ds)
        x = to_model_input(prepared.image, card.input_size)
        one = np.ascontiguousarray(x[None])
        two = np.ascontiguousarray(np.stack([x, x[:, :, ::-1]]))
        result["forward_ms_median"] = _median_ms(lambda: engine.logits(one), repeats, warmup=2)
        result["forward_flip_batch_ms_median"] = _median_ms(lambda: engine.logits(two), repeats, warmup=1)
        threads = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            result["torch_forward_ms_median"] = _median_ms(lambda: engine.logits(one, "torch"), repeats, warmup=2)
        finally:
            torch.set_num_threads(threads)
        result["achieved_gflops"] = round(gflop / (result["forward_ms_median"] / 1000), 1)
        result["fraction_of_sgemm"] = round(result["achieved_gflops"] / result["sgemm_gflops"], 3)
        if not quick:
            result["resnet50_stand_ins"] = [
                stand_in_forward(arch, enc, STAND_IN_INPUT, result["sgemm_gflops"], repeats) for arch, enc in STAND_INS
            ]

        result["image_size"] = list(prepared.shape)
        result["decode_preprocess_ms"] = _median_ms(lambda: from_dataset(dcmread(files[0])), repeats)
        probs = engine.probabilities(two)
        rows, cols = prepared.shape
        spacing = pixel_spacing_mm(ds)

        def postprocess() -> None:
            labels, conf = labels_at_native(probs[0], (rows, cols))
            flipped = labels_at_native(probs[1][:, :, ::-1], (rows, cols))[0]
            class_stats(labels, conf, spacing, flipped)

        result["postprocess_ms"] = _median_ms(postprocess, repeats)
        result["predict_ms"] = _median_ms(lambda: engine.predict(prepared, spacing), repeats)
        result["predict_no_flip_ms"] = _median_ms(lambda: engine.predict(prepared, spacing, False), repeats)
        result["flip_agreement_cost_ms"] = round(result["predict_ms"] - result["predict_no_flip_ms"], 1)
        # timed as reliable, so that every writer runs (see the module docstring)
        prediction = dataclasses.replace(engine.predict(prepared, spacing), quality=Quality(True))
        built = [build_outputs(ds, prediction, card, display_image=prepared.image) for _ in range(repeats + 1)][1:]
        if profile_dir is not None:  # one run of each in-process stage under cProfile, after the timed runs
            result["profiles"] = {
                "decode_preprocess": profile_stage(
                    "decode_preprocess", lambda: from_dataset(dcmread(files[0])), profile_dir
                ),
                "predict": profile_stage("predict", lambda: engine.predict(prepared, spacing), profile_dir),
                "build_outputs": profile_stage(
                    "build_outputs",
                    lambda: build_outputs(ds, prediction, card, display_image=prepared.image),
                    profile_dir,
                ),
                "encode": profile_stage(
                    "encode", lambda: [dataset_bytes(o) for o in built[-1].datasets()], profile_dir
                ),
            }
        for key in ("build_seg", "build_sr", "build_sc"):
            result[f"{key}_ms"] = round(statistics.median(b.timings_ms[key] for b in built), 2)
        outputs = built[-1].datasets()
        result["encode_ms"] = _median_ms(lambda: [dataset_bytes(o) for o in outputs], repeats)
        out_paths = []
        for i, o in enumerate(outputs):
            out_paths.append(work / f"out-{i}.dcm")
            out_paths[-1].write_bytes(dataset_bytes(o))

        scp = StoreSCP(work / "dest")
        from dicom_node.config import Destination

        dest = Destination(scp.ae_title, "127.0.0.1", scp.port)
        result["send_ms"] = _median_ms(lambda: send_files("BENCH", dest, [str(p) for p in out_paths]), repeats)

        # the node: one image sequentially (the first warms up), then 4 concurrent senders
        # the node's destination takes concurrent associations (storescp --fork), as an archive does: each
        # worker process sends on its own association (a single-association storescp would serialise them)
        archive = StoreSCP(work / "dest-node", extra=("--fork",))
        node = start_node(work / "node", model, archive, settings=settings)
        e2e = end_to_end(node, files[:n_seq])[1:]
        result["end_to_end"] = medians(e2e)
        result["end_to_end_ms"] = result["end_to_end"]["end_to_end_ms"]
        result["overhead_ms"] = result["end_to_end"]["overhead_ms"]
        result["forward_in_node_ms"] = result["end_to_end"]["forward"]
        parallel = files[n_seq:]
        result.update(throughput(node, parallel, n_seq))
        node.stop()
        node = None
        # the same with one worker process per core (serve --workers auto), after one warm-up image
        node = start_node(work / "auto", model, archive, settings=settings, worker_processes=cores())
        end_to_end(node, files[:1])
        auto = throughput(node, parallel, 1)
        result.update({f"{k.replace('throughput', 'throughput_auto')}": v for k, v in auto.items()})
        node.stop()
        node = None

        # receiving only: the node with no workers versus storescp, the same files in one association
        recv_files = files[: 2 if quick else 10]
        node = start_node(work / "recv", model, None, workers=0, settings=settings)
        size_mb = sum(p.stat().st_size for p in recv_files) / 1e6
        tries = 1 if quick else 3
        t_node = min(_timed(lambda: storescu(node.port, *recv_files, check=True)) for _ in range(tries))
        t_dcmtk = min(
            _timed(lambda: storescu(scp.port, *recv_files, called=scp.ae_title, check=True)) for _ in range(tries)
        )
        result["receive_mb_per_s"] = round(size_mb / t_node, 1)
        result["storescp_mb_per_s"] = round(size_mb / t_dcmtk, 1)
        result["receive_ratio_vs_storescp"] = round(t_dcmtk / t_node, 3)
        node.stop()
        node = None

        rss_models = [model] if quick else [c.name for c in list_cards(settings.models_dir)]
        result["peak_rss_models"] = rss_models
        for name in rss_models:  # each export made and checked here first: the measured process only loads
            Engine(find_card(name, settings.models_dir), runtime=settings.runtime, cache_dir=settings.cache_dir)
        result["peak_rss_mb"] = peak_rss_mb(rss_models, settings)
        result["cold_start_s"] = cold_start_s(model, work / "cold")
    finally:
        if node is not None:
            node.stop()
        if scp is not None:
            scp.stop()
        if archive is not None:
            archive.stop()
        shutil.rmtree(work, ignore_errors=True)
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["targets"] = targets(result)
    return result


def main(
    model: str,
    as_json: bool,
    quick: bool,
    height: int | None = None,
    profile_dir: Path | None = None,
    settings: InferenceSettings | None = None,
    radiographs: Path | None = None,
) -> int:
    result = run_bench(model, quick, height, profile_dir=profile_dir, settings=settings, radiographs=radiographs)
    print(json.dumps(result, indent=2, default=str) if as_json else format_table(result))
    return 0


__all__ = ["main", "run_bench", "sgemm_gflops", "stand_in_forward"]

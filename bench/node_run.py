"""The node under measurement: benchmark input files (phantom or real radiographs), an in-process node,
and the end-to-end timing of C-STORE to the last output delivered (``spinenode bench``, ``bench/latency.py``).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.testing.peers import TOOL_ENV, StoreSCP, free_port
from inference.settings import InferenceSettings


def phantom_files(folder: Path, n: int, height: int, seed: int = 700000, width: int | None = None) -> list[Path]:
    """``n`` phantom DX files (16-bit, ``height`` rows) with distinct UIDs; the pixels are drawn once.

    With ``width``, the phantom (at most ~height/2 wide) is padded on both sides with its own edge
    columns to that many columns: the issue's 2500x1300 detector image."""
    from dataclasses import replace

    from pydicom.uid import generate_uid

    from inference.data.phantom import make_phantom
    from inference.data.phantom_dicom import phantom_to_dataset

    folder.mkdir(parents=True, exist_ok=True)
    phantom = make_phantom(seed, height=height)
    extra = max((width or 0) - phantom.pixels.shape[1], 0)
    if extra:
        pad = ((0, 0), (extra // 2, extra - extra // 2))
        phantom = replace(phantom, pixels=np.pad(phantom.pixels, pad, mode="edge"), mask=np.pad(phantom.mask, pad))
    ds = phantom_to_dataset(phantom)
    paths = []
    for i in range(n):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if i:
            ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        path = folder / f"dx-{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def radiograph_files(data_dir: Path, folder: Path, n: int, height: int, distinct: int = 8) -> list[Path]:
    """``n`` DX files of real validation radiographs (SpineWeb dataset 16 in ``data_dir``, never trained
    on) resized to ``height`` rows, the first ``distinct`` of them in turn, each file with its own UIDs."""
    from pydicom.uid import generate_uid

    from inference.data.radiograph_dicom import validation_radiographs

    folder.mkdir(parents=True, exist_ok=True)
    radiographs = validation_radiographs(data_dir, min(n, distinct), rows=height)
    paths = []
    for i in range(n):
        ds = radiographs[i % len(radiographs)].dataset
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        path = folder / f"dx-{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _outstanding(node: Any) -> tuple[int, int]:
    """(jobs done or failed, deliveries not yet delivered)."""
    from sqlalchemy import func, select

    from dicom_node.audit.records import DeliveryRecord, DeliveryState, JobRecord, JobState

    with node.db.session() as s:
        finished = s.scalar(
            select(func.count()).select_from(JobRecord).where(JobRecord.state.in_((JobState.DONE, JobState.FAILED)))
        )
        waiting = s.scalar(
            select(func.count()).select_from(DeliveryRecord).where(DeliveryRecord.state != DeliveryState.DELIVERED)
        )
    return int(finished or 0), int(waiting or 0)


def wait_delivered(node: Any, jobs: int, timeout: float = 600.0) -> None:
    """Until ``jobs`` jobs are finished and every delivery is delivered."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        finished, waiting = _outstanding(node)
        if finished >= jobs and waiting == 0:
            return
        time.sleep(0.02)  # the figures come from the audit's times, not from this poll
    raise TimeoutError(f"{jobs} jobs not delivered within {timeout} s")


_SCU = """
import sys, time
from pathlib import Path
from pynetdicom import AE, _config
_config.STORE_SEND_CHUNKED_DATASET = True  # the file's bytes as they are, like storescu
port, called, sop_class, transfer = sys.argv[1:5]
ae = AE(ae_title="BENCHSCU")
ae.add_requested_context(sop_class, [transfer])
assoc = ae.associate("127.0.0.1", int(port), ae_title=called)
assert assoc.is_established, "the node refused the benchmark's association"
print("ready", flush=True)
for line in sys.stdin:
    t0 = time.time()
    rsp = assoc.send_c_store(Path(line.strip()))
    print(t0, time.time(), int(rsp.Status) if rsp is not None and "Status" in rsp else -1, flush=True)
assoc.release()
"""


def end_to_end(node: Any, files: list[Path], jobs_before: int = 0) -> list[dict[str, Any]]:
    """Send ``files`` one at a time on one association held open by a separate process (pynetdicom SCU,
    ``TCP_NODELAY``): per file, from the start of its C-STORE (wall clock in the sending process) to the
    last output accepted by the destination (the audit's delivery time), and the job's parts (ms)."""
    from datetime import UTC

    from pydicom.filereader import read_file_meta_info

    from dicom_node.audit.records import JobRecord

    meta = read_file_meta_info(files[0])
    scu = subprocess.Popen(
        [sys.executable, "-c", _SCU, str(node.port), node.config.ae_title]
        + [str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=TOOL_ENV,
    )
    assert scu.stdin is not None and scu.stdout is not None
    rows = []
    try:
        if scu.stdout.readline().strip() != "ready":
            raise RuntimeError("the benchmark's SCU could not associate with the node")
        for i, path in enumerate(files):
            scu.stdin.write(f"{path}\n")
            scu.stdin.flush()
            t0, t_ack, status = scu.stdout.readline().split()
            if int(status) != 0:
                raise RuntimeError(f"the node answered C-STORE with status {status}")
            wait_delivered(node, jobs_before + i + 1)
            with node.db.session() as s:
                job = s.get(JobRecord, jobs_before + i + 1)
                assert job is not None and job.state.value == "done", job and job.error
                wait_ms = (job.started_at - job.created_at).total_seconds() * 1000
                last = max(d.delivered_at for o in job.outputs for d in o.deliveries)
                last_wall = last.replace(tzinfo=UTC).timestamp()
                rows.append(
                    {
                        "end_to_end_ms": (last_wall - float(t0)) * 1000,
                        "overhead_ms": (last_wall - float(t0)) * 1000 - job.metrics["timings_ms"]["forward"],
                        "cstore_ack_ms": (float(t_ack) - float(t0)) * 1000,
                        "queue_wait_ms": wait_ms,
                        **job.metrics["timings_ms"],
                        "job_total_ms": job.total_ms,
                        "deliver_ms": (last - job.finished_at).total_seconds() * 1000,
                        "image_size": list(job.metrics["image_size"]),
                    }
                )
    finally:
        scu.stdin.close()
        scu.wait(30)
    return rows


def medians(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over the rows that have it (an unreliable prediction has no SEG timing)."""
    keys = dict.fromkeys(k for r in rows for k, v in r.items() if isinstance(v, int | float))
    return {k: round(statistics.median(r[k] for r in rows if k in r), 1) for k in keys}


def start_node(
    work: Path,
    model: str,
    dest: StoreSCP | None,
    workers: int = 1,
    settings: InferenceSettings | None = None,
    worker_processes: int = 0,
) -> Any:
    """An in-process node on ``work`` (``worker_processes``: its jobs run in that many processes)."""
    from dicom_node.config import Destination, NodeConfig
    from dicom_node.roles.node import Node
    from inference.registry import ModelRegistry

    cfg = NodeConfig(
        data_dir=work,
        port=free_port(),
        bind="127.0.0.1",
        model=model,
        workers=workers,
        worker_processes=worker_processes,
        destinations=(Destination(dest.ae_title, "127.0.0.1", dest.port),) if dest else (),
    )
    node = Node.compose(cfg, ModelRegistry.from_settings(settings or InferenceSettings()))
    node.start()
    return node


__all__ = ["StoreSCP", "end_to_end", "medians", "phantom_files", "radiograph_files", "start_node", "wait_delivered"]

"""Time from C-STORE to delivery, and its parts, on a real node (prints a table; --json for figures).

Starts an in-process node with the chosen model and a dcmtk ``storescp`` destination on loopback, sends
phantom DX images one at a time with dcmtk ``storescu`` (``TCP_NODELAY=1``), and reads the audit database:
C-STORE acknowledged (storescu's wall time), queue wait, per-stage job timings and delivery.

    .venv/bin/python bench/latency.py --model demo-unetplusplus --n 5 --height 2500
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_node.audit import DeliveryRecord, JobRecord, OutputRecord  # noqa: E402
from dicom_node.config import Destination, NodeConfig  # noqa: E402
from dicom_node.node import Node  # noqa: E402
from inference.phantom import make_phantom  # noqa: E402
from inference.phantom_dicom import phantom_to_dataset  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int) -> None:
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(port)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo-unetplusplus")
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--height", type=int, default=2500)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    env = {**os.environ, "TCP_NODELAY": "1"}
    work = Path(tempfile.mkdtemp(prefix="spinenode-bench-"))
    dest_port = _free_port()
    dest = subprocess.Popen(
        ["storescp", "--aetitle", "DEST", "--output-directory", str(work / "dest"), str(dest_port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    (work / "dest").mkdir()
    _wait_port(dest_port)
    cfg = NodeConfig(
        data_dir=work / "var",
        port=_free_port(),
        bind="127.0.0.1",
        model=args.model,
        destinations=(Destination("DEST", "127.0.0.1", dest_port),),
    )
    node = Node.compose(cfg)
    node.start()
    rows = []
    try:
        files = []
        for i in range(args.n + 1):  # the first image warms up the model and is not counted
            path = work / f"ph{i}.dcm"
            phantom_to_dataset(make_phantom(700000 + i, height=args.height)).save_as(path, enforce_file_format=True)
            files.append(path)
        for i, path in enumerate(files):
            t0 = time.perf_counter()
            subprocess.run(
                ["storescu", "-aec", "SPINENODE", "127.0.0.1", str(cfg.port), str(path)],
                env=env,
                check=True,
                capture_output=True,
            )
            ack_ms = (time.perf_counter() - t0) * 1000
            while True:
                with node.db.session() as s:
                    job = s.get(JobRecord, i + 1)
                    pending = (
                        s.query(DeliveryRecord)
                        .join(OutputRecord)
                        .filter(OutputRecord.job_id == i + 1, DeliveryRecord.state != "delivered")
                        .count()
                    )
                    done = job is not None and job.state.value == "done" and pending == 0 and job.outputs
                if done:
                    break
                time.sleep(0.005)
            end_ms = (time.perf_counter() - t0) * 1000
            with node.db.session() as s:
                job = s.get(JobRecord, i + 1)
                assert job is not None
                wait_ms = (job.started_at - job.created_at).total_seconds() * 1000
                last = max(d.delivered_at for o in job.outputs for d in o.deliveries)
                send_ms = (last - job.finished_at).total_seconds() * 1000
                rows.append(
                    {
                        "end_to_end_ms": end_ms,
                        "cstore_ack_ms": ack_ms,
                        "queue_wait_ms": wait_ms,
                        **job.metrics["timings_ms"],
                        "job_total_ms": job.total_ms,
                        "deliver_ms": send_ms,
                        "size": list(job.metrics["image_size"]),
                    }
                )
    finally:
        node.stop()
        dest.terminate()
        shutil.rmtree(work, ignore_errors=True)
    rows = rows[1:]
    keys = [k for k in rows[0] if k != "size"]
    summary = {k: round(statistics.median(r[k] for r in rows), 1) for k in keys}
    summary.update({"model": args.model, "n": len(rows), "image_size": rows[0]["size"]})
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{args.model}, {len(rows)} images of {rows[0]['size'][0]}x{rows[0]['size'][1]} (medians, ms)")
        for k in keys:
            print(f"  {k:20s} {summary[k]:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

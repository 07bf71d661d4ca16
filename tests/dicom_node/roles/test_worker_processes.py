"""``spinenode serve --workers auto`` as users run it: one worker process per core beside the receiver.

Real processes, a dcmtk ``storescu`` sender and ``storescp`` destination on loopback, the audit database
they share: jobs are run by the worker processes (never by the receiving one), a worker killed with SIGKILL
is replaced and the images after it still come back, SIGTERM stops serve and its workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicom_node.audit.records import AuditDB
from dicom_node.audit.report import audit_report
from tests.conftest import TINY_MODEL, StoreSCP, free_port, storescu, wait_port, wait_until

pytestmark = pytest.mark.slow  # processes, dcmtk peers

PROJECT = Path(__file__).resolve().parents[3]
OUTPUTS_PER_IMAGE = 3  # SEG, SR, SC
STOP_S = 60


def health(http_port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/health", timeout=10) as r:
        return dict(json.loads(r.read()))


def running_pids(http_port: int) -> list[int]:
    return [p["pid"] for p in health(http_port)["worker_processes"] if p["running"]]


@pytest.fixture
def serve(tmp_path: Path, storescp: StoreSCP) -> Iterator[tuple[subprocess.Popen[str], int, int, Path]]:
    port, http_port = free_port(), free_port()
    data = tmp_path / "var"
    cmd = [sys.executable, "-m", "dicom_node.cli", "serve", "--workers", "auto", "--model", TINY_MODEL]
    cmd += ["--port", str(port), "--bind", "127.0.0.1", "--http-port", str(http_port), "--data-dir", str(data)]
    cmd += ["--destination", storescp.destination]
    log = tmp_path / "serve.log"  # a file, not a pipe nobody reads (a full pipe would stall the node)
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=PROJECT, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        wait_port(port, timeout=60)
        wait_port(http_port, timeout=60)
        yield proc, port, http_port, data
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(STOP_S)
        print(log.read_text()[-5000:])  # shown when the test fails


def test_jobs_run_in_worker_processes_a_killed_one_is_replaced(
    serve: tuple[subprocess.Popen[str], int, int, Path], storescp: StoreSCP, phantom_files: list[Path]
) -> None:
    proc, port, http_port, data = serve
    cores = os.cpu_count() or 1
    wait_until(lambda: len(running_pids(http_port)) == cores, timeout=30)
    first = running_pids(http_port)
    assert proc.pid not in first

    assert storescu(port, *phantom_files[:2]).returncode == 0
    storescp.wait_for_files(2 * OUTPUTS_PER_IMAGE, timeout=120)

    assert health(http_port)["status"] == "healthy"
    os.kill(first[0], signal.SIGKILL)  # a worker dies; the supervisor starts another after its back-off
    wait_until(lambda: health(http_port)["worker_processes"][0]["restarts"] == 1, timeout=30)
    wait_until(lambda: len(running_pids(http_port)) == cores, timeout=30)
    [slot] = [p for p in health(http_port)["worker_processes"] if p["slot"] == 0]
    assert slot["pid"] != first[0] and slot["exit_codes"] == [-signal.SIGKILL]

    assert storescu(port, phantom_files[2]).returncode == 0
    storescp.wait_for_files(3 * OUTPUTS_PER_IMAGE, timeout=120)

    db = AuditDB(data / "spinenode.db")
    try:
        jobs = audit_report(db)["jobs"]
    finally:
        db.dispose()
    assert len(jobs) == 3 and {j["state"] for j in jobs} == {"done"}
    workers = {j["worker"]["pid"] for j in jobs}
    assert proc.pid not in workers  # the receiving process ran none of them
    assert workers <= {*first, *running_pids(http_port)}

    final = running_pids(http_port)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(STOP_S) == 0
    for pid in final:  # the workers stopped with serve
        wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists() or _zombie(pid), timeout=STOP_S)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True

"""dcmtk peers on loopback and the waits around them, written once for tests, benchmark and scripts.

``StoreSCP`` is dcmtk ``storescp`` writing what it receives into a folder; ``storescu`` sends files with
dcmtk ``storescu``. Both run with ``TCP_NODELAY=1`` (dcmtk otherwise waits on Nagle for small PDUs).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
TOOL_ENV = {**os.environ, "TCP_NODELAY": "1"}
PORT_WAIT_S = 20.0  # a local server that has not bound its port by then is not coming
POLL_S = 0.05
WAIT_UNTIL_S = 120.0  # the slowest waited-for event in the tests: a real model run and a delivery on a busy machine
STORESCU_TIMEOUT_S = 600.0  # a benchmark sends hundreds of large files in one call


class MissingTool(LookupError):
    """A command-line tool the peer needs is not installed."""


def find_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MissingTool(f"{name} is not installed (make debian-tools installs dcmtk)")
    return path


def free_port() -> int:
    """A TCP port nobody listens on right now (bind to port 0 and read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = PORT_WAIT_S, proc: subprocess.Popen[Any] | None = None) -> None:
    """Return once something accepts connections on ``port``; fail early if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on port {port}")
        with socket.socket() as s:
            if s.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(POLL_S)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def wait_until(predicate: Callable[[], object], timeout: float = WAIT_UNTIL_S, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(2 * POLL_S)
    raise TimeoutError(f"{what} not met after {timeout} s")


class StoreSCP:
    """dcmtk ``storescp`` on loopback, writing what it receives into ``folder``."""

    def __init__(self, folder: Path, ae_title: str = "DEST", extra: tuple[str, ...] = ()) -> None:
        self.folder, self.ae_title, self.port = folder, ae_title, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [find_tool("storescp"), "--aetitle", ae_title, "--output-directory", str(folder), "--accept-all"]
            + [*extra, str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=TOOL_ENV,
        )
        wait_port(self.port, proc=self.proc)

    @property
    def destination(self) -> str:
        return f"{self.ae_title}@{LOOPBACK}:{self.port}"

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def wait_for_files(self, n: int, timeout: float = 60.0) -> list[Path]:
        wait_until(lambda: len(self.files()) >= n, timeout, f"storescp receiving {n} files")
        time.sleep(0.2)  # the last file's rename
        return self.files()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def storescu(
    port: int,
    *files: Path,
    called: str = "SPINENODE",
    calling: str = "STORESCU",
    extra: tuple[str, ...] = (),
    check: bool = False,
    timeout: float = STORESCU_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """Send files with dcmtk ``storescu -v``; the completed process's output holds the statuses."""
    return subprocess.run(
        [find_tool("storescu"), "-v", "-aet", calling, "-aec", called, *extra, LOOPBACK, str(port)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=TOOL_ENV,
        check=check,
    )

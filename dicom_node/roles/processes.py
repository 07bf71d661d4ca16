"""Worker processes beside the receiver (``spinenode serve --workers auto``): one per core by default.

Each process is a ``WorkerNode`` (``roles.worker``) on the node's own database and data directory,
started from the same typed configuration (handed over on its standard input, never re-read from
files or the environment) with one model thread, so that N processes share N cores. The receiver keeps
receiving and acknowledging; the jobs it queues are claimed by whichever process is free (the fenced,
leased claim of ``queue.jobs``), so a process that dies loses nothing: its job's lease expires and
another takes it, and the supervisor here starts a new process after a back-off.

A job queued by the receiver wakes the worker processes at once: ``notify`` sends them SIGUSR1, which
their entry point turns into a wake-up of their queue (they otherwise poll it every second). ``serve``
ignores SIGUSR1 itself, so a process that has not installed its handler yet inherits "ignore", never
"terminate".

A worker process runs in its own session (a Ctrl-C in the terminal reaches only ``serve``, which then
stops its workers: each finishes the job in hand) and asks the kernel to end it if ``serve`` dies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

from dicom_node.config import NodeConfig, cores
from inference.settings import InferenceSettings

log = logging.getLogger(__name__)

CHILD_MODULE = "dicom_node.cli.worker_process"  # the worker process's entry point
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # before the 1st, 2nd, ... restart of one slot (then the last)
HEALTHY_AFTER_S = 60.0  # a process that ran this long starts its slot's back-off again from the first step
STOP_TIMEOUT_S = 90.0  # for a worker to finish the job in hand after SIGTERM; then SIGKILL
POLL_S = 0.5  # how often the supervisor looks at its processes
WAKE_SIGNAL = signal.SIGUSR1  # "a job is queued", to the worker processes


def threads_each(processes: int) -> int:
    """Model threads of each of ``processes`` worker processes: the cores shared out, at least one."""
    return max(1, cores() // max(1, processes))


@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    due: float = 0.0  # when a dead slot's next process may start
    exits: list[int] = field(default_factory=list)


class WorkerProcesses:
    """``count`` worker processes for ``config`` (whose own ``workers`` is then the threads of each)."""

    def __init__(self, config: NodeConfig, settings: InferenceSettings, count: int, verbose: bool = False) -> None:
        self.config = config
        self.settings = settings
        self.verbose = verbose
        self._slots = [_Slot(i) for i in range(count)]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="worker-processes", daemon=True)
        self._wakes = False

    def start(self) -> None:
        try:  # inherited by the workers until they handle it (see the module docstring)
            signal.signal(WAKE_SIGNAL, signal.SIG_IGN)
            self._wakes = True
        except ValueError:  # not the main thread: no wake-ups, the workers poll
            self._wakes = False
        for slot in self._slots:
            self._spawn(slot)
        self._thread.start()

    def notify(self) -> None:
        """Wake the worker processes: a job is queued."""
        if not self._wakes:
            return
        for slot in self._slots:
            proc = slot.proc
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(WAKE_SIGNAL)

    def _spawn(self, slot: _Slot) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", CHILD_MODULE],
            stdin=subprocess.PIPE,
            start_new_session=True,  # terminal signals reach serve only
        )
        assert proc.stdin is not None
        slot.proc, slot.started = proc, time.monotonic()
        handover(proc.stdin, self.config, self.settings, self.verbose, os.getpid())
        log.info("worker process %d started (pid %d)", slot.index, proc.pid)

    def _watch(self) -> None:
        while not self._stop.wait(POLL_S):
            with self._lock:
                for slot in self._slots:
                    self._look_after(slot)

    def _look_after(self, slot: _Slot) -> None:
        if slot.proc is not None:
            code = slot.proc.poll()
            if code is None:
                return
            ran = time.monotonic() - slot.started
            if ran >= HEALTHY_AFTER_S:
                slot.restarts = 0
            delay = RESTART_BACKOFF_S[min(slot.restarts, len(RESTART_BACKOFF_S) - 1)]
            log.warning(
                "worker process %d (pid %d) exited with %s after %.0f s; a new one in %g s",
                slot.index,
                slot.proc.pid,
                code,
                ran,
                delay,
            )
            slot.exits.append(code)
            slot.proc, slot.due = None, time.monotonic() + delay
            slot.restarts += 1
        if time.monotonic() >= slot.due and not self._stop.is_set():
            try:
                self._spawn(slot)
            except OSError as exc:  # e.g. the new process died before it read its configuration
                log.warning("worker process %d could not be started: %s", slot.index, exc)
                slot.proc, slot.due = None, time.monotonic() + RESTART_BACKOFF_S[-1]

    def status(self) -> list[dict[str, Any]]:
        """Per process: slot, pid (None while waiting to restart), whether it runs, restarts, exit codes."""
        with self._lock:
            return [
                {
                    "slot": s.index,
                    "pid": s.proc.pid if s.proc is not None else None,
                    "running": s.proc is not None and s.proc.poll() is None,
                    "restarts": s.restarts,
                    "exit_codes": list(s.exits),
                }
                for s in self._slots
            ]

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM to every process (each finishes the job in hand), SIGKILL to those still alive after
        ``timeout``."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        procs = [s.proc for s in self._slots if s.proc is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                log.warning("worker process %d did not stop within %g s: killed", proc.pid, timeout)
                proc.kill()
                proc.wait()


def handover(stream: IO[bytes], config: NodeConfig, settings: InferenceSettings, verbose: bool, parent: int) -> None:
    """Write what a worker process needs to its standard input (a pickle: parent to its own child only)."""
    stream.write(pickle.dumps((config, settings, verbose, parent)))
    stream.close()


def taken_over(stream: IO[bytes]) -> tuple[NodeConfig, InferenceSettings, bool, int]:
    """In the worker process: what ``handover`` wrote."""
    config, settings, verbose, parent = pickle.loads(stream.read())  # written by our parent, to its own child only
    return config, settings, verbose, parent


__all__ = ["WorkerProcesses", "handover", "taken_over", "threads_each"]

"""The entry point of a worker process started by ``spinenode serve --workers auto`` (``roles.processes``).

It takes its configuration from its standard input (never from files or the environment), configures
logging, asks the kernel to stop it when ``serve`` dies, and runs a ``WorkerNode`` until SIGTERM: then it
finishes the job in hand and exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies


def _die_with_parent(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the supervisor's SIGTERM is the only stop
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request above took effect
        sys.exit(1)


def main() -> int:
    from dicom_node.cli import configure_logging
    from dicom_node.cli.signals import SignalPipe
    from dicom_node.roles.processes import WAKE_SIGNAL, taken_over
    from dicom_node.roles.worker import WorkerNode
    from inference.registry import ModelRegistry

    config, settings, verbose, parent = taken_over(sys.stdin.buffer)
    configure_logging(verbose)
    _die_with_parent(parent)
    with SignalPipe(others=(WAKE_SIGNAL,)) as signals:
        node = WorkerNode.compose(config, ModelRegistry.from_settings(settings))
        node.start()
        signals.wait_for_stop({WAKE_SIGNAL: node.queue.notify})  # serve: "a job is queued"
        node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

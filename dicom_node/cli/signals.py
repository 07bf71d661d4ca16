"""A long-running command's main thread waiting for SIGINT or SIGTERM.

A Python signal handler runs in the main thread between two bytecodes, wherever that thread is. A handler
that sets a ``threading.Event`` the main thread waits on deadlocks when the signal lands while
``Event.wait`` holds the event's own lock (a plain, non-reentrant one): ``spinenode serve`` once never
stopped after a SIGTERM that came a few milliseconds after its first association. Here the Python
handlers do nothing; the interpreter's C-level handler writes each signal's number to a pipe
(``signal.set_wakeup_fd``) and the main thread reads the pipe. No lock is involved, and a signal that
comes before the wait begins is not lost: its byte is already there.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable, Mapping
from types import FrameType, TracebackType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
READ_BYTES = 64  # signal numbers read from the pipe at a time


def _nothing(signum: int, frame: FrameType | None) -> None:
    """A Python handler must exist for the C-level handler to write the signal's number to the pipe."""


class SignalPipe:
    """While entered: ``STOP_SIGNALS`` and ``others`` arrive as bytes on a pipe; ``wait_for_stop`` reads
    them. Enter it in the main thread (``signal`` allows nothing else), before the work a signal should
    stop begins."""

    def __init__(self, others: Iterable[int] = ()) -> None:
        self.signals = (*STOP_SIGNALS, *others)
        self._read = self._write = -1
        self._previous_fd = -1
        self._previous: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}

    def __enter__(self) -> SignalPipe:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)  # the C-level handler must never block
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._previous = {sig: signal.signal(sig, _nothing) for sig in self.signals}
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._read)
        os.close(self._write)

    def wait_for_stop(self, on_signal: Mapping[int, Callable[[], object]] | None = None) -> int:
        """Block until SIGINT or SIGTERM (returned); meanwhile call ``on_signal[n]`` for each other signal
        ``n`` that comes, in this (the main) thread."""
        callbacks = on_signal or {}
        while True:
            for signum in os.read(self._read, READ_BYTES):
                if signum in STOP_SIGNALS:
                    return signum
                callback = callbacks.get(signum)
                if callback is not None:
                    callback()


__all__ = ["STOP_SIGNALS", "SignalPipe"]

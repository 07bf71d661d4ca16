"""Decoding compressed pixel data with a time limit, in a helper process that can be killed.

The receiver decodes every image before acknowledging it. Uncompressed pixel data is a view of the bytes
received and is decoded in place. Compressed pixel data (JPEG, JPEG-LS, JPEG 2000, RLE, ...) goes to a
decoder process (``python -m dicom_node.decoding``, one per receiver, started in the background): a
crafted or broken codestream that makes a codec spin or crash then costs that process - killed after
``decode_timeout_s``, or found dead, and started again for the next image - and the peer gets Cannot
Understand (0xC000), while the node and its other associations carry on. The declared size is checked
before any decoding (``max_pixels``), so what comes back is bounded too.

The two processes speak over the helper's stdin/stdout: an 8-byte length, then a pickle - the data set
one way, ``("ok", pixel array)`` or ``("error", message)`` the other.
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from typing import IO, Any

import numpy as np
from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">Q")


class DecodeError(Exception):
    """The pixel data could not be decoded in time, or the codec failed or crashed."""


def _write(stream: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            raise EOFError("decoder stream closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class Decoder:
    """``decode(ds)``: the data set's pixel array, compressed data decoded in the helper process."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # one image at a time through the one helper

    def start(self) -> None:
        """Start the helper now (it is started on first use otherwise)."""
        with self._lock:
            self._ensure()

    def _ensure(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "dicom_node.decoding"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
            )
        return self._proc

    def decode(self, ds: Dataset) -> np.ndarray:
        """The pixel array of ``ds``; raises :class:`DecodeError` (too slow, codec error, crash)."""
        transfer = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if transfer is None or not transfer.is_compressed:
            return ds.pixel_array
        with self._lock:
            proc = self._ensure()
            assert proc.stdin is not None and proc.stdout is not None
            deadline = time.monotonic() + self.timeout_s
            try:
                _write(proc.stdin, ds)
                ready, _, _ = select.select([proc.stdout], [], [], max(deadline - time.monotonic(), 0))
                if not ready:
                    self._kill()
                    log.warning("decoding took longer than %g s: decoder process killed", self.timeout_s)
                    raise DecodeError(f"decoding took longer than {self.timeout_s:g} s")
                (size,) = _HEADER.unpack(_read_exact(proc.stdout, _HEADER.size))
                outcome, value = pickle.loads(_read_exact(proc.stdout, size))
            except (OSError, EOFError, pickle.PickleError) as exc:
                code = proc.poll()
                self._kill()
                raise DecodeError(f"decoder process failed (exit {code}): {type(exc).__name__}") from exc
        if time.monotonic() > deadline:  # the reply came, but late (the limit covers the hand-over too)
            raise DecodeError(f"decoding took longer than {self.timeout_s:g} s")
        if outcome != "ok":
            raise DecodeError(str(value))
        return value

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for stream in (self._proc.stdin, self._proc.stdout):
                if stream is not None:
                    stream.close()
            self._proc = None

    def stop(self) -> None:
        with self._lock:
            self._kill()


def serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """The helper's loop: data sets in, pixel arrays (or errors) out, until stdin closes."""
    while True:
        try:
            (size,) = _HEADER.unpack(_read_exact(stdin, _HEADER.size))
            ds = pickle.loads(_read_exact(stdin, size))
        except EOFError:
            return
        try:
            reply: tuple[str, Any] = ("ok", ds.pixel_array)
        except Exception as exc:  # noqa: BLE001 - any codec failure goes back as the refusal's reason
            reply = ("error", f"pixel data could not be decoded: {type(exc).__name__}: {exc}")
        _write(stdout, reply)


if __name__ == "__main__":
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the replies
    serve(sys.stdin.buffer, replies)

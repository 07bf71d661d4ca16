"""Decoding compressed pixel data with a time limit, in helper processes that can be killed.

The receiver decodes every image before acknowledging it. Uncompressed pixel data is a view of the bytes
received and is decoded in place. Compressed pixel data (JPEG, JPEG-LS, JPEG 2000, RLE, ...) goes to one
of a small pool of decoder processes (``python -m dicom_node.dimse.decoding``, started with the SCP): a
crafted or broken codestream that makes a codec spin or crash then costs that process - killed at the
deadline, or found dead, and started again for the next image - and the peer gets Cannot Understand
(0xC000), while the node and its other associations carry on. The deadline (``decode_timeout_s``) runs
from the request, so the wait for a free helper counts: a hostile file stalls at most its own helper for
that long, and the other helpers keep serving. The declared size is checked before any decoding
(``max_pixels``), so what comes back is bounded too.

The wire format has no pickle. Node to helper: an 8-byte length, then a DICOM file of the pixel module
only (the image's pixel description, transfer syntax and pixel data: nothing else of the data set leaves
the node). Helper to node: an 8-byte length, then either ``E`` and a UTF-8 message, or ``A``, the numpy
dtype (8 bytes, e.g. ``<u2``), the number of dimensions (1 byte), the shape (8 bytes each) and the raw
pixel bytes, whose length must equal what the header promises.
"""

from __future__ import annotations

import io
import logging
import os
import queue
import select
import struct
import subprocess
import sys
import time
from typing import IO

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite

log = logging.getLogger(__name__)

DEFAULT_HELPERS = 2  # one per core of the reference machine; a stalled codec holds one, the other serves
_LENGTH = struct.Struct(">Q")
_ARRAY, _ERROR = b"A", b"E"
_DTYPE_BYTES = 8
_DTYPES = frozenset({"|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<f4", "<f8", "|b1"})  # what codecs return
_MAX_DIMS = 4  # frames, rows, columns, samples
# the elements a codec needs: the Image Pixel module's description and the data itself
PIXEL_KEYWORDS = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PixelData",
)


class DecodeError(Exception):
    """The pixel data could not be decoded in time, or the codec failed or crashed."""


def pixel_module_bytes(ds: Dataset) -> bytes:
    """A DICOM file holding only ``ds``'s pixel description, transfer syntax and pixel data."""
    out = Dataset()
    for keyword in PIXEL_KEYWORDS:
        if keyword in ds:
            out[keyword] = ds[keyword]
    out.file_meta = FileMetaDataset()
    out.file_meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    buf = io.BytesIO()
    dcmwrite(buf, out, enforce_file_format=False)
    return buf.getvalue()


def _frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


def _read_exact(stream: IO[bytes], n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            raise EOFError("decoder stream closed")
        view[got : got + len(chunk)] = chunk
        got += len(chunk)
    return buf


def _write_until(fd: int, data: bytes, deadline: float) -> bool:
    """Write all of ``data`` to the pipe ``fd`` unless the deadline passes first (a helper that stopped
    reading). Returns whether it was all written."""
    view, done = memoryview(data), 0
    os.set_blocking(fd, False)
    while done < len(data):
        _, writable, _ = select.select([], [fd], [], max(deadline - time.monotonic(), 0))
        if not writable:
            return False
        try:
            done += os.write(fd, view[done:])
        except BlockingIOError:
            continue
    return True


def encode_array(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array)
    header = array.dtype.str.encode().ljust(_DTYPE_BYTES) + bytes([array.ndim])
    return _ARRAY + header + struct.pack(f">{array.ndim}Q", *array.shape) + array.tobytes()


def decode_reply(reply: bytearray) -> np.ndarray:
    """The array a helper sent, checked against its own header; DecodeError for an error or a bad reply."""
    kind, body = bytes(reply[:1]), memoryview(reply)[1:]
    if kind == _ERROR:
        raise DecodeError(bytes(body).decode("utf-8", "replace"))
    if kind != _ARRAY or len(body) < _DTYPE_BYTES + 1:
        raise DecodeError("decoder sent an unreadable reply")
    dtype = bytes(body[:_DTYPE_BYTES]).strip().decode("ascii", "replace")
    ndim = body[_DTYPE_BYTES]
    start = _DTYPE_BYTES + 1 + 8 * ndim
    if dtype not in _DTYPES or not 1 <= ndim <= _MAX_DIMS or len(body) < start:
        raise DecodeError(f"decoder sent an unexpected array ({dtype}, {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}Q", body[_DTYPE_BYTES + 1 : start])
    data = body[start:]
    if len(data) != int(np.prod(shape, dtype=np.uint64)) * np.dtype(dtype).itemsize:
        raise DecodeError("decoder sent pixel bytes that do not match their shape")
    return np.frombuffer(data, dtype=dtype).reshape(shape)  # writable: the reply is a bytearray


class _Helper:
    """One decoder process; used by one request at a time (the pool hands it out)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    def ensure(self) -> subprocess.Popen[bytes]:
        if self.proc is None or self.proc.poll() is not None:
            self.kill()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dicom_node.dimse.decoding"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
            )
        return self.proc

    def exchange(self, request: bytes, deadline: float, timeout_s: float) -> bytearray:
        proc = self.ensure()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            sent = _write_until(proc.stdin.fileno(), _frame(request), deadline)
            ready, _, _ = select.select([proc.stdout], [], [], max(deadline - time.monotonic(), 0))
            if not sent or not ready:
                self.kill()
                log.warning("decoding took longer than %g s: decoder process killed", timeout_s)
                raise DecodeError(f"decoding took longer than {timeout_s:g} s")
            (size,) = _LENGTH.unpack(_read_exact(proc.stdout, _LENGTH.size))
            reply = _read_exact(proc.stdout, size)
        except (OSError, EOFError, struct.error) as exc:
            code = proc.poll()
            self.kill()
            raise DecodeError(f"decoder process failed (exit {code}): {type(exc).__name__}") from exc
        if time.monotonic() > deadline:  # the reply came, but late (the limit covers the hand-over too):
            self.kill()  # one rule for every helper past its deadline, whether or not it answered
            raise DecodeError(f"decoding took longer than {timeout_s:g} s")
        return reply

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    stream.close()
            self.proc = None


class Decoder:
    """``decode(ds)``: the data set's pixel array, compressed data decoded by a pool of helper processes."""

    def __init__(self, timeout_s: float, helpers: int = DEFAULT_HELPERS) -> None:
        self.timeout_s = timeout_s
        self._helpers = [_Helper() for _ in range(max(1, helpers))]
        self._idle: queue.LifoQueue[_Helper] = queue.LifoQueue()  # the warm one first
        for helper in self._helpers:
            self._idle.put(helper)

    def start(self) -> None:
        """Start the helpers now (else each on first use; a cold start counts against that image's deadline)."""
        taken = [self._idle.get() for _ in self._helpers]
        try:
            for helper in taken:
                helper.ensure()
        finally:
            for helper in taken:
                self._idle.put(helper)

    def helper_pids(self) -> list[int]:
        """The pids of the running helper processes."""
        return [h.proc.pid for h in self._helpers if h.proc is not None and h.proc.poll() is None]

    def decode(self, ds: Dataset) -> np.ndarray:
        """The pixel array of ``ds``; raises :class:`DecodeError` (too slow, codec error, crash)."""
        transfer = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if transfer is None or not transfer.is_compressed:
            return ds.pixel_array
        deadline = time.monotonic() + self.timeout_s
        request = pixel_module_bytes(ds)
        try:
            helper = self._idle.get(timeout=max(deadline - time.monotonic(), 0))
        except queue.Empty:
            raise DecodeError(f"decoding took longer than {self.timeout_s:g} s (every decoder was busy)") from None
        try:
            reply = helper.exchange(request, deadline, self.timeout_s)
        finally:
            self._idle.put(helper)
        return decode_reply(reply)

    def stop(self) -> None:
        for helper in self._helpers:
            helper.kill()


def serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """The helper's loop: pixel modules in, raw arrays (or errors) out, until stdin closes."""
    while True:
        try:
            (size,) = _LENGTH.unpack(_read_exact(stdin, _LENGTH.size))
            request = bytes(_read_exact(stdin, size))
        except EOFError:
            return
        try:
            reply = encode_array(dcmread(io.BytesIO(request), force=True).pixel_array)
        except Exception as exc:  # noqa: BLE001 - any codec failure goes back as the refusal's reason
            reply = _ERROR + f"pixel data could not be decoded: {type(exc).__name__}: {exc}".encode()
        stdout.write(_frame(reply))
        stdout.flush()


if __name__ == "__main__":
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the replies
    serve(sys.stdin.buffer, replies)

"""Compressed pixel data is decoded in a helper process with a time limit (``dicom_node.dimse.decoding``):
decoded exactly, refused with Cannot Understand when too slow or broken, and the helper comes back after
it was killed. One test runs a real node with dcmtk ``storescu``."""

from __future__ import annotations

import copy
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import JPEGLSLossless, RLELossless

from dicom_node.audit.records import AuditDB
from dicom_node.config import NodeConfig
from dicom_node.dimse.decoding import DecodeError, Decoder, decode_reply, encode_array
from dicom_node.dimse.scp import Receiver, Refusal
from dicom_node.dimse.status import StoreStatus
from dicom_node.roles.node import Node
from dicom_node.storage import Storage
from inference.data.phantom import make_phantom
from inference.data.phantom_dicom import phantom_to_dataset
from tests.conftest import TINY_MODEL, free_port, session_models, storescu

DX = "1.2.840.10008.5.1.4.1.1.1.1"


@pytest.fixture(scope="module")
def compressed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A phantom DX (seed 930000) stored RLE and JPEG-LS lossless compressed."""
    out = tmp_path_factory.mktemp("compressed")
    paths = {}
    for ts in (RLELossless, JPEGLSLossless):
        ds = phantom_to_dataset(make_phantom(930000, height=512))
        ds.compress(ts)
        paths[ts.name] = out / f"{ts.keyword}.dcm"
        ds.save_as(paths[ts.name], enforce_file_format=True)
    return paths


@pytest.fixture
def decoder() -> Iterator[Decoder]:
    d = Decoder(timeout_s=30)
    yield d
    d.stop()


def test_compressed_pixels_come_back_exactly(decoder: Decoder, compressed: dict[str, Path]) -> None:
    truth = phantom_to_dataset(make_phantom(930000, height=512)).pixel_array
    for path in compressed.values():
        assert np.array_equal(decoder.decode(dcmread(path)), truth)


def test_uncompressed_pixels_need_no_helper(decoder: Decoder, phantom_files: list[Path]) -> None:
    ds = dcmread(phantom_files[0])
    assert np.array_equal(decoder.decode(ds), ds.pixel_array)
    assert decoder.helper_pids() == []  # nothing was started for it


def test_too_slow_is_refused_and_the_helper_comes_back(decoder: Decoder, compressed: dict[str, Path]) -> None:
    ds = dcmread(compressed[RLELossless.name])
    decoder.decode(ds)  # the helper is up
    decoder.timeout_s = 0.0  # nothing decodes in no time
    with pytest.raises(DecodeError, match="longer than"):
        decoder.decode(ds)
    assert decoder.helper_pids() == []  # killed
    decoder.timeout_s = 30
    assert decoder.decode(ds).shape == (int(ds.Rows), int(ds.Columns))


def test_a_dead_helper_is_replaced(decoder: Decoder, compressed: dict[str, Path]) -> None:
    ds = dcmread(compressed[RLELossless.name])
    decoder.decode(ds)
    [pid] = decoder.helper_pids()
    os.kill(pid, signal.SIGKILL)  # as if a codec had crashed it between two images
    time.sleep(0.2)
    assert decoder.decode(ds).shape == (int(ds.Rows), int(ds.Columns))


@pytest.mark.slow  # waits out a deadline
def test_a_stalled_helper_holds_up_only_its_own_image(compressed: dict[str, Path]) -> None:
    """A codec stuck in one helper (here: the process stopped) costs that image its deadline; the image
    decoded beside it goes to the other helper and comes back in time."""
    ds = dcmread(compressed[RLELossless.name])
    deadline_s = 5
    decoder = Decoder(timeout_s=deadline_s, helpers=2)
    try:
        decoder.start()
        stuck = decoder.helper_pids()[0]
        os.kill(stuck, signal.SIGSTOP)
        outcomes: list[tuple[str, float]] = []

        def one() -> None:
            started = time.monotonic()
            try:
                decoder.decode(ds)
                outcomes.append(("decoded", time.monotonic() - started))
            except DecodeError as exc:
                outcomes.append((str(exc), time.monotonic() - started))

        threads = [threading.Thread(target=one) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        assert sorted(o for o, _ in outcomes) == ["decoded", f"decoding took longer than {deadline_s} s"]
        assert all(seconds < deadline_s for o, seconds in outcomes if o == "decoded")
        assert stuck not in decoder.helper_pids() and len(decoder.helper_pids()) == 1  # killed at its deadline
    finally:
        decoder.stop()


@pytest.mark.slow  # waits out a deadline
def test_the_wait_for_a_free_helper_counts_against_the_deadline(compressed: dict[str, Path]) -> None:
    ds = dcmread(compressed[RLELossless.name])
    decoder = Decoder(timeout_s=30, helpers=1)
    try:
        decoder.decode(ds)  # warm: the helper has imported its codecs
        [pid] = decoder.helper_pids()
        os.kill(pid, signal.SIGSTOP)
        decoder.timeout_s = 4  # the first request holds the only helper well past the second's deadline
        first = threading.Thread(target=lambda: pytest.raises(DecodeError, decoder.decode, ds))
        first.start()
        taken_by = time.monotonic() + 5
        while decoder._idle.qsize() and time.monotonic() < taken_by:  # the first has the helper
            time.sleep(0.01)
        decoder.timeout_s = 1
        started = time.monotonic()
        with pytest.raises(DecodeError, match="longer than 1 s"):
            decoder.decode(ds)  # waits for the only helper, and the wait is part of its second
        assert time.monotonic() - started < 2
        first.join(10)
    finally:
        decoder.stop()


def test_a_reply_must_match_its_own_header() -> None:
    array = np.arange(12, dtype=np.uint16).reshape(3, 4)
    reply = bytearray(encode_array(array))
    back = decode_reply(reply)
    assert np.array_equal(back, array) and back.flags.writeable
    with pytest.raises(DecodeError, match="do not match their shape"):
        decode_reply(reply[:-1])
    forged = bytearray(reply)
    forged[1:9] = b"|O".ljust(8)  # an object array would need unpickling: refused
    with pytest.raises(DecodeError, match="unexpected array"):
        decode_reply(forged)
    with pytest.raises(DecodeError, match="could not"):
        decode_reply(bytearray(b"Epixel data could not be decoded"))


def test_broken_codestream_is_refused_with_the_reason(tmp_path: Path, compressed: dict[str, Path]) -> None:
    cfg = NodeConfig(data_dir=tmp_path / "var")
    receiver = Receiver(cfg, AuditDB(cfg.db_path), Storage(cfg.data_dir), on_job=lambda _: None)
    ds = copy.deepcopy(dcmread(compressed[RLELossless.name]))
    ds.PixelData = ds.PixelData[:100]
    try:
        with pytest.raises(Refusal) as info:
            receiver.receive(ds, b"", DX, "SPINENODE", "SCU")
        assert info.value.status is StoreStatus.CANNOT_UNDERSTAND
        assert "could not be decoded" in info.value.detail
    finally:
        receiver.decoder.stop()


@pytest.mark.slow
def test_node_refuses_what_does_not_decode_in_time_and_carries_on(
    tmp_path: Path, compressed: dict[str, Path], phantom_files: list[Path], models_root: Path
) -> None:
    cfg = NodeConfig(data_dir=tmp_path / "var", port=free_port(), bind="127.0.0.1", model=TINY_MODEL)
    node = Node.compose(replace(cfg, decode_timeout_s=0.0), session_models())
    node.start()
    try:
        proc = storescu(node.port, compressed[RLELossless.name], extra=("-xr",))  # propose RLE
        assert "error: cannotunderstand" in (proc.stdout + proc.stderr).lower()
        refusals = [e for e in node.db.events() if e.kind == "refused"]
        assert [e.status for e in refusals] == [0xC000] and "longer than" in (refusals[0].detail or "")
        assert storescu(node.port, phantom_files[0]).returncode == 0  # uncompressed: still accepted
    finally:
        node.stop()
    node = Node.compose(
        replace(cfg, data_dir=tmp_path / "var2"), session_models()
    )  # the default limit: it goes through
    node.start()
    try:
        assert storescu(node.port, compressed[RLELossless.name], extra=("-xr",)).returncode == 0
        assert not [e for e in node.db.events() if e.kind == "refused"]
    finally:
        node.stop()


def test_uploads_use_the_time_limited_decoder(tmp_path: Path, compressed: dict[str, Path], models_root: Path) -> None:
    from dicom_node.http.uploads import SegmentRequest, UploadError, segment_upload

    request = SegmentRequest(compressed[RLELossless.name].read_bytes(), "rle.dcm", TINY_MODEL)
    slow, normal = Decoder(timeout_s=0.0), Decoder(timeout_s=30)
    try:
        with pytest.raises(UploadError) as info:
            segment_upload(request, tmp_path, session_models(), 80_000_000, False, slow.decode)
        assert info.value.status == 400 and "longer than" in info.value.message
        result = segment_upload(request, tmp_path, session_models(), 80_000_000, False, normal.decode)
        assert result["input"]["kind"] == "dicom" and result["input"]["rows"] == 512  # decoded by the helper
        assert {"seg", "sr", "sc"} <= result["files"].keys()
    finally:
        slow.stop()
        normal.stop()

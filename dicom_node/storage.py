"""Durable files: write to a temporary name, fsync, rename, fsync the directory.

Layout under the data directory: ``instances/<study>/<sop>.dcm`` for what we receive and
``outputs/<study>/<sop>.dcm`` for what we write. Files are 0600, directories 0700 (patient data).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite

_SAFE = re.compile(r"[^0-9A-Za-z.\-]")


def _safe(name: str) -> str:
    return _SAFE.sub("_", name)[:128] or "unknown"


class Storage:
    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("instances", "outputs"):
            (root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)

    def instance_path(self, study_uid: str, sop_uid: str) -> Path:
        return self.root / "instances" / _safe(study_uid) / f"{_safe(sop_uid)}.dcm"

    def output_path(self, study_uid: str, sop_uid: str) -> Path:
        return self.root / "outputs" / _safe(study_uid) / f"{_safe(sop_uid)}.dcm"

    def free_mb(self) -> float:
        return shutil.disk_usage(self.root).free / 2**20


def write_durably(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``; on return the bytes and the name are on disk."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def dataset_bytes(ds: Dataset) -> bytes:
    """Encode a dataset with its file meta as a Part 10 file."""
    buf = DicomBytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()

"""Run dicom3tools' ``dciodvfy`` on a file and return its errors (and warnings).

Without ``dciodvfy`` a test is skipped on a developer machine but fails in CI (``$CI`` set), where the
tool must be installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

DCIODVFY = "dciodvfy"
TIMEOUT_S = 120


def dciodvfy_path() -> str:
    """The ``dciodvfy`` executable; skips the calling test (fails it in CI) when it is missing."""
    path = shutil.which(DCIODVFY)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{DCIODVFY} is required in CI (install dicom3tools)")
        pytest.skip(f"{DCIODVFY} not installed")
    return path


def dciodvfy_lines(path: str | Path) -> list[str]:
    """Every line ``dciodvfy`` reports for ``path`` (it writes its findings to stderr)."""
    proc = subprocess.run([dciodvfy_path(), str(path)], capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    return [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]


def dciodvfy_errors(path: str | Path) -> list[str]:
    """The ``Error`` lines ``dciodvfy`` reports for ``path`` (empty when the object is valid)."""
    return [line for line in dciodvfy_lines(path) if line.startswith("Error")]


def dciodvfy_warnings(path: str | Path) -> list[str]:
    """The ``Warning`` lines ``dciodvfy`` reports for ``path``."""
    return [line for line in dciodvfy_lines(path) if line.startswith("Warning")]

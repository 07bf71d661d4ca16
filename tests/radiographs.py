"""Real validation radiographs as DX files for tests (``inference.data.radiograph_dicom``), read from the
team's copy of SpineWeb dataset 16 beside the repository."""

from __future__ import annotations

from pathlib import Path

from inference.data import radiograph_dicom
from inference.data.radiograph_dicom import Radiograph

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "spineweb16"


def validation_radiographs(n: int, rows: int | None = None, first: int = 0) -> list[Radiograph]:
    """The first ``n`` validation images (from ``first``), optionally resized to ``rows`` rows."""
    return radiograph_dicom.validation_radiographs(SHARED_DATA, n, rows, first)


__all__ = ["SHARED_DATA", "Radiograph", "validation_radiographs"]

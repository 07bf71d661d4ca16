"""Which Secondary Capture images the receiver treats as radiographs (validation only, no sockets).

An SC is segmented when its Modality names an X-ray projection modality, or when it names none (OT or
empty) and its Conversion Type is not one that cannot hold a radiograph (workstation capture, scanned
document, drawing, synthetic). The node's own overlay is never segmented again.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_node.audit.records import AuditDB
from dicom_node.config import NodeConfig
from dicom_node.dimse.scp import SECONDARY_CAPTURE_PREFIX, Receiver, Refusal
from dicom_node.dimse.status import StoreStatus
from dicom_node.storage import Storage
from dicom_node.writers.outputs import MANUFACTURER

SC = SECONDARY_CAPTURE_PREFIX  # Secondary Capture Image Storage


@pytest.fixture
def receiver(tmp_path: Path) -> Receiver:
    cfg = NodeConfig(data_dir=tmp_path / "var")
    return Receiver(cfg, AuditDB(cfg.db_path), Storage(cfg.data_dir), on_job=lambda _: None)


def as_secondary_capture(path: Path, modality: str, conversion: str | None, manufacturer: str = "ACME") -> Dataset:
    ds = dcmread(path)
    ds.SOPClassUID = SC
    ds.Modality = modality
    ds.Manufacturer = manufacturer
    if conversion is None:
        ds.pop("ConversionType", None)
    else:
        ds.ConversionType = conversion
    return ds


@pytest.mark.parametrize(
    ("modality", "conversion"),
    [("DX", "WSD"), ("RG", "DF"), ("OT", "DF"), ("OT", "DI"), ("", None)],
)
def test_radiograph_secondary_captures_are_accepted(
    receiver: Receiver, phantom_files: list[Path], modality: str, conversion: str | None
) -> None:
    receiver.validate(as_secondary_capture(phantom_files[0], modality, conversion), SC)


@pytest.mark.parametrize(
    ("modality", "conversion", "manufacturer", "reason"),
    [
        ("XA", "WSD", "ACME", "modality XA is not a radiograph"),
        ("OT", "WSD", "ACME", "conversion WSD is not a radiograph"),
        ("OT", "SD", "ACME", "conversion SD is not a radiograph"),
        ("OT", "DI", MANUFACTURER, "overlay is not segmented again"),
    ],
)
def test_other_secondary_captures_are_refused(
    receiver: Receiver, phantom_files: list[Path], modality: str, conversion: str, manufacturer: str, reason: str
) -> None:
    with pytest.raises(Refusal) as info:
        receiver.validate(as_secondary_capture(phantom_files[0], modality, conversion, manufacturer), SC)
    assert info.value.status is StoreStatus.CANNOT_UNDERSTAND
    assert reason in info.value.detail

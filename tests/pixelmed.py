"""Run PixelMed's validators (Debian package ``pixelmed-apps``) on a file and return their findings.

``DicomInstanceValidator`` checks the IODs PixelMed describes (of ours: the Segmentation; it answers
"IOD (SOP Class) unrecognized" for a single-frame Secondary Capture), ``DicomSRValidator`` checks an SR's
IOD and its templates (TID 1500 and below). Java's XPath limits must be lifted for PixelMed's large
style sheets. Without java or the jar a test is skipped on a developer machine and fails in CI.

PixelMed's 2022 rules contradict the standard in three places that a SEG of a projection radiograph
meets; those errors are listed in :data:`KNOWN_DEFECTS` with the reason, and :func:`pixelmed_errors`
leaves them out (``tests/dicom_node/writers/test_pixelmed.py`` pins that they still occur, so a fixed PixelMed
shows up).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

JAR = Path("/usr/share/java/pixelmed.jar")
INSTANCE_VALIDATOR = "com.pixelmed.validate.DicomInstanceValidator"
SR_VALIDATOR = "com.pixelmed.validate.DicomSRValidator"
# PixelMed's style sheets exceed the JDK's default XPath expression limits.
JAVA_OPTIONS = (
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
)
TIMEOUT_S = 300
UNRECOGNISED = "IOD (SOP Class) unrecognized"

# Errors PixelMed (20220618) reports against the standard, not against us:
KNOWN_DEFECTS: dict[str, re.Pattern[str]] = {
    # General Image Patient Orientation has VM 2 (PS3.3 C.7.6.1.1.1, a row and a column direction);
    # PixelMed's SEG rule expects VM 1.
    "patient orientation VM": re.compile(
        r"GeneralImageModule/PatientOrientation/.*multiplicity - got 2 but expected 1-1"
    ),
    # Laterality is required only for a paired body part (PS3.3 C.7.3.1, type 2C); PixelMed requires it in
    # a SEG whenever Image and Frame Laterality are absent, and dciodvfy rejects it in a SEG, even empty.
    "laterality of an unpaired body part": re.compile(r"GeneralSeriesModule/Laterality/: : Missing conditional"),
    # The Derivation Image functional group may be shared or per frame, not both (PS3.3 C.7.6.16);
    # without Plane Position PixelMed requires it in the shared item AND in every per-frame item, and
    # also reports it when it is in both. Ours is per frame (highdicom's reader indexes frames by it).
    "derivation image in shared groups": re.compile(
        r"DerivationImageMacro/DerivationImageSequence/: SharedFunctionalGroupsSequence/Item\[1\]/: Missing required"
    ),
}


def java_command() -> list[str]:
    """``java`` with the XPath limits lifted and PixelMed on the class path; skips (fails in CI) without."""
    java = shutil.which("java")
    if java is None or not JAR.is_file():
        if os.environ.get("CI"):
            pytest.fail("PixelMed's validators are required in CI (make debian-tools installs pixelmed-apps)")
        pytest.skip("pixelmed-apps (java, pixelmed.jar) not installed")
    return [java, *JAVA_OPTIONS, "-cp", str(JAR)]


def pixelmed_lines(path: str | Path, validator: str = INSTANCE_VALIDATOR) -> list[str]:
    """Every line ``validator`` reports for ``path``."""
    proc = subprocess.run(
        [*java_command(), validator, str(path)], capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]


def is_known_defect(line: str) -> bool:
    return any(pattern.search(line) for pattern in KNOWN_DEFECTS.values())


def pixelmed_errors(path: str | Path, validator: str = INSTANCE_VALIDATOR) -> list[str]:
    """The ``Error`` lines of ``validator`` for ``path``, less :data:`KNOWN_DEFECTS`."""
    return [line for line in pixelmed_lines(path, validator) if line.startswith("Error") and not is_known_defect(line)]


def sr_errors(path: str | Path) -> list[str]:
    """The ``Error`` lines of ``DicomSRValidator`` (IOD and templates) for an SR."""
    return pixelmed_errors(path, SR_VALIDATOR)


__all__ = [
    "KNOWN_DEFECTS",
    "UNRECOGNISED",
    "is_known_defect",
    "pixelmed_errors",
    "pixelmed_lines",
    "sr_errors",
]

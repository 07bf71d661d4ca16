"""The spine measurements of a prediction as TID 1500 measurement groups: Cobb angles and T1 tilt.

One TID 1501 "Measurement Group" per Cobb angle, in the challenge's order (the main curve, then the two
secondary angles; ``inference.analysis.cobb``), and one for the T1 tilt. Each carries a tracking identifier (UID
from the source, the model and the measurement), the model as algorithm (TID 4019) and one TID 300
measurement:

* Cobb angle: SCT 285285000 "Cobb angle" in UCUM ``deg``; its end vertebrae as two "Finding Site" concept
  modifiers (SNOMED CT vertebra codes, upper first); inferred from the two endplate lines on the source
  image, each a SCOORD POLYLINE of two points (the upper end vertebra's upper endplate, the lower end
  vertebra's lower endplate), so a viewer can draw them. A secondary angle that is the challenge's "no
  curve" (0 degrees, one vertebra, T1 or L5, as both end vertebrae) has no lines to be inferred from: it
  gets no group (OHIF 3.13 fails on a measurement without one) and the report says so in words;
* T1 tilt: no standard concept exists, so private ``T1TILT`` (scheme 99SPINESEG, "T1 tilt: upper endplate
  of T1 to the image horizontal, positive rising to the image right"), in ``deg``, finding site T1,
  inferred from T1's upper endplate line.

Coordinates are image coordinates (column, row) of pixel centres plus one half (PS3.3 C.18.6.1.1), as the
region outlines of ``writers.regions``. A reliable prediction whose angles could not be measured (a
vertebra not found) gets no Cobb group; the report states why among its findings.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_node.writers.private_codes import PRIVATE_SCHEME
from dicom_node.writers.provenance import algorithm_id
from dicom_node.writers.regions import PIXEL_CENTRE
from dicom_node.writers.uids import tracking_uid
from inference.analysis.measure import Curve, Measurements
from inference.model_card import ModelCard

COBB_ANGLE = codes.SCT.CobbAngle
T1_TILT = Code("T1TILT", PRIVATE_SCHEME, "T1 tilt (upper endplate to image horizontal)")  # + rising right
UNIT_DEGREE = codes.UCUM.Degree
CURVE_NAMES = ("main", "secondary 1", "secondary 2")  # the challenge's order of the three angles


def vertebra_code(name: str) -> Code:
    """The SNOMED CT code of a vertebra "T1" .. "L5"."""
    return getattr(codes.SCT, f"{name}Vertebra")


def _line(points: np.ndarray, source: Dataset) -> hd.sr.ScoordContentItem:
    """A two-point POLYLINE on ``source``, inferred-from child of a measurement."""
    item = hd.sr.ScoordContentItem(
        name=codes.DCM.ImageRegion,
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.asarray(points, np.float64) + PIXEL_CENTRE,
        relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM,
    )
    image = hd.sr.ImageContentItem(
        name=codes.DCM.SourceOfMeasurement,
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
        relationship_type=hd.sr.RelationshipTypeValues.SELECTED_FROM,
    )
    item.ContentSequence = hd.sr.ContentSequence([image])
    return item


def _group(
    label: str,
    key: str,
    measurement: hd.sr.Measurement,
    lines: list[np.ndarray],
    card: ModelCard,
    source: Dataset,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """A TID 1501 group of one measurement whose NUM is inferred from ``lines`` on ``source``."""
    num = measurement[0]
    num.ContentSequence = hd.sr.ContentSequence([*num.get("ContentSequence", []), *(_line(p, source) for p in lines)])
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid(source.SOPInstanceUID, card.name, card.weights_sha256, key), identifier=label
        ),
        algorithm_id=algorithm_id(card),
        measurements=[measurement],
    )


def cobb_group(
    index: int, curve: Curve, card: ModelCard, source: Dataset
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The group of the ``index``-th Cobb angle (0: main curve)."""
    measurement = hd.sr.Measurement(
        name=COBB_ANGLE,
        value=round(float(curve.angle_deg), 2),
        unit=UNIT_DEGREE,
        finding_sites=[
            hd.sr.FindingSite(anatomic_location=vertebra_code(curve.upper)),
            hd.sr.FindingSite(anatomic_location=vertebra_code(curve.lower)),
        ],
    )
    label = f"Cobb angle {index + 1} ({CURVE_NAMES[index]}) {curve.upper}-{curve.lower}"
    return _group(label, f"cobb-{index + 1}", measurement, curve.endplates, card, source)


def no_curve_note(index: int, curve: Curve) -> str:
    """What the report says, instead of a group, of a secondary angle that is the challenge's "no curve"."""
    return (
        f"Cobb angle {index + 1} ({CURVE_NAMES[index]}): no curve (0 deg, both end vertebrae {curve.upper}: "
        "no vertebra beyond it is measured)"
    )


def t1_tilt_group(
    measurements: Measurements, card: ModelCard, source: Dataset
) -> hd.sr.MeasurementsAndQualitativeEvaluations | None:
    """The T1 tilt group, or ``None`` when T1's tilt was not measured."""
    t1 = next((v for v in measurements.vertebrae if v.name == "T1"), None)
    if measurements.t1_tilt_deg is None or t1 is None:
        return None
    measurement = hd.sr.Measurement(
        name=T1_TILT,
        value=round(float(measurements.t1_tilt_deg), 2),
        unit=UNIT_DEGREE,
        finding_sites=[hd.sr.FindingSite(anatomic_location=vertebra_code("T1"))],
    )
    return _group("T1 tilt", "t1-tilt", measurement, [t1.corners[[0, 1]]], card, source)


def spine_groups(
    measurements: Measurements | None, card: ModelCard, source: Dataset
) -> tuple[list[hd.sr.MeasurementsAndQualitativeEvaluations], list[str]]:
    """The Cobb and T1 tilt groups of ``measurements``, and the reasons for what could not be measured."""
    if measurements is None:
        return [], []
    cobb = list(enumerate(measurements.cobb))
    groups = [cobb_group(i, c, card, source) for i, c in cobb if c.is_curve]
    tilt = t1_tilt_group(measurements, card, source)
    if tilt is not None:
        groups.append(tilt)
    return groups, [no_curve_note(i, c) for i, c in cobb if not c.is_curve] + list(measurements.notes)


__all__ = ["COBB_ANGLE", "T1_TILT", "cobb_group", "no_curve_note", "spine_groups", "t1_tilt_group", "vertebra_code"]

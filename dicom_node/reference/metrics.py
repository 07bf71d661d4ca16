"""``spinenode metrics``: each model's running accuracy on the site's own reference segmentations.

Per model (name and weights version) and segment, over the recorded comparisons (``comparisons``
table, one row per reference SEG and segment): the count, the mean, median and 5th percentile of the
per-image Dice and Jaccard, and the dataset-summed Dice and Jaccard (intersections and unions summed
over all images, as ``inference.analysis.metrics.Overlap`` accumulates them). A model and segment whose mean
Dice over its ``recent`` latest comparisons is below ``alert_below`` gets an alert line. Comparisons
where both masks are empty (Dice undefined) count, but carry no Dice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import func, select

from dicom_node.audit.records import AuditDB, ComparisonRecord, ReceivedSegRecord, ReferenceState
from inference.analysis.metrics import Overlap

NOT_COMPARED_LISTED = 20  # the newest reference SEGs not compared (failed, unusable) listed with their reasons

LOW_PERCENTILE = 5  # the "worst cases" figure: 5th percentile of the per-image values
DIGITS = 4


@dataclass
class SegmentAccuracy:
    """Accumulated comparisons of one model version and one segment, oldest first."""

    model: str
    model_version: str
    segment: str
    dice: list[float] = field(default_factory=list)
    jaccard: list[float] = field(default_factory=list)
    summed: Overlap = field(default_factory=Overlap)
    count: int = 0

    def add(self, row: ComparisonRecord) -> None:
        self.count += 1
        if row.dice is not None:
            self.dice.append(float(row.dice))
        if row.jaccard is not None:
            self.jaccard.append(float(row.jaccard))
        self.summed += Overlap(row.intersection_pixels, row.predicted_pixels, row.reference_pixels)

    def recent_mean_dice(self, recent: int) -> float | None:
        window = self.dice[-recent:]
        return float(np.mean(window)) if window else None


def distribution(values: list[float]) -> dict[str, float | None]:
    """Mean, median and low percentile of ``values`` (None each when there are none)."""
    if not values:
        return {"mean": None, "median": None, f"p{LOW_PERCENTILE}": None}
    data = np.asarray(values, dtype=np.float64)
    return {
        "mean": _r(float(data.mean())),
        "median": _r(float(np.median(data))),
        f"p{LOW_PERCENTILE}": _r(float(np.percentile(data, LOW_PERCENTILE))),
    }


def aggregate(rows: Iterable[ComparisonRecord], recent: int, alert_below: float) -> dict[str, Any]:
    """Per model version and segment figures of ``rows`` (taken oldest first), and the alert lines."""
    groups: dict[tuple[str, str, str], SegmentAccuracy] = {}
    for row in rows:
        key = (row.model, row.model_version, row.segment)
        groups.setdefault(key, SegmentAccuracy(*key)).add(row)
    accuracy, alerts = [], []
    for key in sorted(groups):
        g = groups[key]
        recent_mean = g.recent_mean_dice(recent)
        alert = recent_mean is not None and recent_mean < alert_below
        if alert:
            alerts.append(
                f"ALERT: {g.model} ({g.model_version}) {g.segment}: mean Dice of the last "
                f"{min(recent, len(g.dice))} comparison(s) is {recent_mean:.3f}, below {alert_below:.3f}"
            )
        accuracy.append(
            {
                "model": g.model,
                "model_version": g.model_version,
                "segment": g.segment,
                "count": g.count,
                "dice": distribution(g.dice),
                "jaccard": distribution(g.jaccard),
                "summed": {
                    "dice": _r(g.summed.dice),
                    "jaccard": _r(g.summed.iou),
                    "intersection_pixels": g.summed.intersection,
                    "predicted_pixels": g.summed.predicted,
                    "reference_pixels": g.summed.reference,
                },
                "recent": {"n": min(recent, len(g.dice)), "mean_dice": _r(recent_mean)},
                "alert": alert,
            }
        )
    return {"recent": recent, "alert_below": alert_below, "accuracy": accuracy, "alerts": alerts}


def metrics_report(db: AuditDB, recent: int, alert_below: float, model: str | None = None) -> dict[str, Any]:
    """The aggregate of every comparison in the audit database (of ``model`` only, when given)."""
    with db.session() as s:
        q = select(ComparisonRecord).order_by(ComparisonRecord.at, ComparisonRecord.id)
        if model:
            q = q.where(ComparisonRecord.model == model)
        report = aggregate(s.scalars(q), recent, alert_below)
        states = s.execute(select(ReceivedSegRecord.state, func.count()).group_by(ReceivedSegRecord.state))
        report["received_segs"] = {state.value: int(n) for state, n in states}
        not_compared = (
            select(ReceivedSegRecord)
            .where(ReceivedSegRecord.state.in_((ReferenceState.FAILED, ReferenceState.UNUSABLE)))
            .order_by(ReceivedSegRecord.id.desc())
            .limit(NOT_COMPARED_LISTED)
        )
        report["not_compared"] = [
            {"reference_sop_uid": r.instance.sop_instance_uid, "state": r.state.value, "reason": r.detail}
            for r in s.scalars(not_compared)
        ]
    report["model"] = model
    return report


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_metrics(report: dict[str, Any]) -> str:
    """A table of the report, then the alert lines and what became of the received SEGs."""
    p = f"p{LOW_PERCENTILE}"
    lines = [
        f"{'model':24} {'version':12} {'segment':12} {'n':>5}  {'Dice mean/median/' + p:22}"
        f"  {'Jaccard mean/median/' + p:22}  {'summed Dice/Jaccard':19}  recent Dice"
    ]
    for a in report["accuracy"]:
        dice, jac, summed = a["dice"], a["jaccard"], a["summed"]
        lines.append(
            f"{a['model']:24} {a['model_version']:12} {a['segment']:12} {a['count']:>5}  "
            f"{_f(dice['mean']) + '/' + _f(dice['median']) + '/' + _f(dice[p]):22}  "
            f"{_f(jac['mean']) + '/' + _f(jac['median']) + '/' + _f(jac[p]):22}  "
            f"{_f(summed['dice']) + '/' + _f(summed['jaccard']):19}  "
            f"{_f(a['recent']['mean_dice'])} (last {a['recent']['n']})"
        )
    if not report["accuracy"]:
        lines.append("no comparisons yet: send reference segmentations (DICOM SEG) of processed images")
    lines.extend(report["alerts"])
    if report.get("received_segs"):
        states = ", ".join(f"{n} {state}" for state, n in sorted(report["received_segs"].items()))
        lines.append(f"received SEGs: {states}")
    for r in report.get("not_compared", []):
        lines.append(f"  not compared ({r['state']}): {r['reference_sop_uid']}: {r['reason']}")
    return "\n".join(lines)


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, DIGITS)


__all__ = ["SegmentAccuracy", "aggregate", "distribution", "format_metrics", "metrics_report"]

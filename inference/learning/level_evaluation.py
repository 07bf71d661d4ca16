"""Evaluation on SpineWeb dataset 16's fixed validation split, at native resolution, and the quality flag's
thresholds fitted there.

Figures per class (V, T1): dataset-summed IoU and Dice, per-image median and 10th percentile; the share of
images where T1 is found (IoU > 0.3); how many predictions the quality flag marks unreliable. Measurements
(``inference.analysis.measure``, on the images where the prediction is reliable and every vertebra T1..L5 was
found): the challenge's Cobb SMAPE against ``angles.csv`` and the mean absolute error of each of the three
angles; the T1 tilt error against the tilt of T1's true upper endplate. Images without measurements are
counted; the SMAPE is also given with each of them scored as a prediction of 0 (100 % for that image).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from inference.analysis.cobb import endplate_tilt_deg, smape
from inference.analysis.levels import to_spine_labels
from inference.analysis.measure import measure
from inference.analysis.metrics import OverlapSummary
from inference.data.spineweb import SpineWeb
from inference.engine import Engine
from inference.preprocess import PreparedImage
from inference.quality import QualityFigures, QualityThresholds, figures, judge

T1_FOUND_IOU = 0.3  # T1 counts as found above this IoU (the criterion)
GOOD_V_IOU = 0.6  # a prediction the quality flag must pass: V IoU above this and T1 found
FIT_MARGIN = 0.8  # fitted minimum = this fraction of the lowest figure among good predictions
FLIP_MARGIN = 0.1  # fitted flip-Dice minimum = lowest good flip Dice minus this


def _quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median_per_image": None, "p10_per_image": None}
    return {
        "median_per_image": round(float(np.median(values)), 4),
        "p10_per_image": round(float(np.percentile(values, 10)), 4),
    }


def fit_thresholds(rows: list[tuple[QualityFigures, bool]]) -> QualityThresholds:
    """Thresholds that pass every good validation prediction, with a margin."""
    good = [f for f, ok in rows if ok]
    if not good:
        return QualityThresholds()
    flips = [f.flip_dice for f in good if f.flip_dice is not None]
    t1_flips = [f.t1_flip_dice for f in good if f.t1_flip_dice is not None]
    return QualityThresholds(
        min_column_percent=round(FIT_MARGIN * min(f.column_percent for f in good), 4),
        min_largest_share=round(FIT_MARGIN * min(f.largest_share for f in good), 4),
        min_t1_share=round(FIT_MARGIN * min(f.t1_share for f in good), 5),
        min_flip_dice=round(max(0.0, min(flips) - FLIP_MARGIN), 4) if flips else QualityThresholds().min_flip_dice,
        min_t1_flip_dice=(
            round(max(0.0, min(t1_flips) - FLIP_MARGIN), 4) if t1_flips else QualityThresholds().min_t1_flip_dice
        ),
    )


def measurement_figures(
    truth: list[tuple[float, float, float]],
    predicted: list[list[float]],
    all_truth: list[tuple[float, float, float]],
    all_predicted: list[list[float]],
    t1_errors: list[float],
    n_images: int,
) -> dict[str, Any]:
    """Cobb SMAPE and per-angle MAE where measured, SMAPE over all images, T1 tilt MAE."""
    cobb: dict[str, Any] = {"measured_images": len(truth), "not_measured_images": n_images - len(truth)}
    if truth:
        errors = np.abs(np.asarray(truth) - np.asarray(predicted))
        cobb |= {
            "smape_percent": round(smape(np.asarray(truth), np.asarray(predicted)), 2),
            "mae_deg": [round(float(e), 2) for e in errors.mean(axis=0)],  # main, then the two secondary angles
        }
    if all_truth:
        cobb["smape_percent_all_images"] = round(smape(np.asarray(all_truth), np.asarray(all_predicted)), 2)
    tilt: dict[str, Any] = {"measured_images": len(t1_errors)}
    if t1_errors:
        tilt |= {
            "mae_deg": round(float(np.mean(t1_errors)), 2),
            "median_error_deg": round(float(np.median(t1_errors)), 2),
        }
    return {"cobb": cobb, "t1_tilt": tilt}


def evaluate_spineweb(
    engine: Engine, data_dir: Path, fit_quality: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Figures of ``engine`` on the validation split (never trained on) of the SpineWeb directory."""
    data = SpineWeb(data_dir)
    _, val = data.split()
    summary = OverlapSummary()
    per_image: dict[str, dict[str, list[float]]] = {c: {"iou": [], "dice": []} for c in ("V", "T1")}
    rows: list[tuple[QualityFigures, bool]] = []
    flagged_good = flagged_bad = n_bad = 0
    times: list[float] = []
    cobb_truth: list[tuple[float, float, float]] = []
    cobb_pred: list[list[float]] = []
    all_truth: list[tuple[float, float, float]] = []
    all_pred: list[list[float]] = []
    t1_errors: list[float] = []
    for record, image, levels in tqdm(data.iter_samples(val), total=len(val), disable=not progress, desc="evaluate"):
        pred = engine.predict(PreparedImage(image), None, flip_agreement=True)
        times.append(pred.inference_ms)
        ovs = summary.add(pred.labels, to_spine_labels(levels))
        for c in ("V", "T1"):
            per_image[c]["iou"].append(ovs[c].iou or 0.0)
            per_image[c]["dice"].append(ovs[c].dice or 0.0)
        good = (ovs["T1"].iou or 0.0) > T1_FOUND_IOU and (ovs["V"].iou or 0.0) > GOOD_V_IOU
        rows.append((figures(pred.labels, pred.classes), good))
        n_bad += not good
        if not pred.quality.reliable:
            flagged_good += good
            flagged_bad += not good
        # what the model measures, before ``reportable`` withholds what its validation does not support
        m = measure(pred.levels) if pred.levels is not None and pred.quality.reliable else None
        measured = m is not None and len(m.cobb) == len(record.angles)
        all_truth.append(record.angles)
        all_pred.append([c.angle_deg for c in m.cobb] if m is not None and measured else [0.0] * len(record.angles))
        if measured:
            cobb_truth.append(record.angles)
            cobb_pred.append(all_pred[-1])
        if m is not None and m.t1_tilt_deg is not None:
            t1_errors.append(abs(m.t1_tilt_deg - endplate_tilt_deg(record.corners[0])))
    per_class: dict[str, Any] = {}
    for c in ("V", "T1"):
        ov = summary.summed[c]
        per_class[c] = {
            "iou": round(ov.iou or 0.0, 4),
            "dice": round(ov.dice or 0.0, 4),
            "iou_per_image": _quantiles(per_image[c]["iou"]),
            "dice_per_image": _quantiles(per_image[c]["dice"]),
        }
    t1 = per_image["T1"]["iou"]
    excluded = len(data.exclusions)
    result: dict[str, Any] = {
        "model": engine.card.name,
        "data": f"spineweb16 validation split ({len(val)} images; {excluded} of "
        f"{len(data.records) + excluded} images excluded from the dataset for label defects)",
        "n_images": len(val),
        "per_class": per_class,
        "t1_found_share": round(sum(v > T1_FOUND_IOU for v in t1) / max(1, len(t1)), 4),
        "quality_flag": {
            "thresholds": engine.thresholds.to_json(),
            "flagged_unreliable": flagged_good + flagged_bad,
            "flagged_among_good": flagged_good,
            "flagged_among_poor": flagged_bad,
            "poor_predictions": n_bad,
        },
        "median_predict_ms": round(float(np.median(times)), 1) if times else None,
        "measurements": measurement_figures(cobb_truth, cobb_pred, all_truth, all_pred, t1_errors, len(val)),
    }
    if fit_quality:
        fitted = fit_thresholds(rows)
        flagged = [not judge(f, fitted).reliable for f, _ in rows]
        result["quality_fit"] = {
            "thresholds": fitted.to_json(),
            "rule": f"pass every validation prediction with V IoU > {GOOD_V_IOU} and T1 IoU > {T1_FOUND_IOU}: "
            f"{FIT_MARGIN} x the lowest column size, largest-piece share and T1 share among them, and their lowest "
            f"flip Dice and T1 flip Dice minus {FLIP_MARGIN}",
            "flagged_among_good": sum(fl for fl, (_, ok) in zip(flagged, rows, strict=True) if ok),
            "flagged_among_poor": sum(fl for fl, (_, ok) in zip(flagged, rows, strict=True) if not ok),
            "poor_predictions": n_bad,
        }
        engine.thresholds = fitted
        engine.card = replace(engine.card, quality_thresholds=fitted.to_json())
    return result

"""All outputs of one prediction: SEG, SR and overlay SC, in the source's study, with deterministic UIDs.

A prediction whose quality flag says it is not reliable (``Prediction.quality``) gets no SEG: its SR
states that no reliable segmentation was obtained, and its overlay says so instead of drawing a mask.

``build_outputs`` decides what the three writers share: the manufacturer, series numbers and
descriptions, software version, the demo disclaimer, and the UIDs (``dicom_node.writers.uids``: the same source,
model and weights always give the same series and instance UIDs; other weights give other UIDs), and
the provenance IHE AIR asks for (``writers.provenance``: the model as Contributing Equipment, Content
Date/Time when the analysis started).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import SegmentationStorage

from dicom_node.config import DEFAULT_CHARACTER_SET
from dicom_node.writers import uids
from dicom_node.writers.overlay import build_overlay
from dicom_node.writers.provenance import stamp
from dicom_node.writers.seg import build_segmentation
from dicom_node.writers.source import writable_source
from dicom_node.writers.sr import build_measurement_report
from inference.model_card import ModelCard
from inference.prediction import Prediction

MANUFACTURER = "SpineNode"
PACKAGE = "spinenode"
SEG_SERIES_NUMBER = 901
SR_SERIES_NUMBER = 902
SC_SERIES_NUMBER = 903
DEMO_TAG = "DEMO - NOT FOR DIAGNOSTIC USE"
LO_MAX = 64  # maximum length of an LO value (descriptions)
RESEARCH = "RESEARCH"  # Content Qualification of demo-model output


@dataclass
class Outputs:
    """The objects written for one prediction, in the order they are sent (no SEG for an unreliable one)."""

    seg: Dataset | None
    sr: Dataset
    sc: Dataset
    timings_ms: dict[str, float] = field(default_factory=dict)  # build time of each writer

    def by_kind(self) -> dict[str, Dataset]:
        """``"seg"`` (when written), ``"sr"`` and ``"sc"``, in sending order (the SR references the SEG,
        so the SEG goes first)."""
        kinds = {"seg": self.seg, "sr": self.sr, "sc": self.sc}
        return {kind: ds for kind, ds in kinds.items() if ds is not None}

    def datasets(self) -> list[Dataset]:
        """SEG (when written), SR, SC."""
        return list(self.by_kind().values())


@functools.cache  # a package metadata lookup: once per process, not per job
def software_version() -> str:
    """The installed SpineNode version (``"unknown"`` when run from an uninstalled tree)."""
    try:
        return f"{PACKAGE} {version(PACKAGE)}"
    except PackageNotFoundError:
        return f"{PACKAGE} unknown"


def disclaimer(card: ModelCard) -> str:
    """The text every output carries: what the model was trained on and "NOT FOR DIAGNOSTIC USE"."""
    return card.disclaimer


def description(what: str, card: ModelCard) -> str:
    """A series description (LO, at most 64 characters) that flags demo output."""
    text = f"{what} {card.name}"
    if card.demo:
        text = f"{text[: LO_MAX - len(DEMO_TAG) - 3]} ({DEMO_TAG})"
    return text[:LO_MAX]


def build_outputs(
    source: Dataset,
    prediction: Prediction,
    card: ModelCard,
    *,
    display_image: np.ndarray | None = None,
    default_character_set: str = DEFAULT_CHARACTER_SET,
    started: datetime | None = None,
    vertebra_segments: bool = True,
) -> Outputs:
    """Build SEG, SR and overlay SC for ``prediction`` (made by ``card``'s model) on ``source``.

    ``display_image`` is the source as displayed (grey uint8 or [0, 1] float, or RGB); without it the
    overlay prepares the image from the dataset. ``default_character_set`` reads a source's undeclared
    non-ASCII text (``writers.source``). ``started``: when the analysis of the source began (default: now).
    ``vertebra_segments``: a segment per vertebra in the SEG, when the model predicts levels.
    """

    source = writable_source(source, default_character_set)

    def uid(kind: str) -> str:
        return uids.output_uid(source.SOPInstanceUID, card.name, card.weights_sha256, kind)

    software = software_version()
    source.walk(_read)  # every element parsed now: the writers below read the source from two threads
    seg_uid, seg_series_uid = uid(uids.SEG), uid(uids.SEG_SERIES)

    def segmentation() -> Dataset:
        return build_segmentation(
            source,
            prediction.labels,
            card,
            series_uid=seg_series_uid,
            sop_uid=seg_uid,
            series_number=SEG_SERIES_NUMBER,
            manufacturer=MANUFACTURER,
            series_description=description("Spine segmentation", card),
            content_description=description("Spine and T1 by", card),
            software_versions=software,
            content_qualification=RESEARCH,  # every model: research, not for diagnosis
            levels=prediction.levels if vertebra_segments else None,
        )

    def report() -> Dataset:
        seg = evidence_of(source, seg_series_uid, seg_uid) if prediction.quality.reliable else None
        return build_measurement_report(
            source,
            seg,
            prediction,
            card,
            series_uid=uid(uids.SR_SERIES),
            sop_uid=uid(uids.SR),
            series_number=SR_SERIES_NUMBER,
            manufacturer=MANUFACTURER,
            series_description=description("Spine measurements", card),
            software_versions=software,
            disclaimer=disclaimer(card),
        )

    def overlay() -> Dataset:
        return build_overlay(
            source,
            prediction,
            card,
            series_uid=uid(uids.SC_SERIES),
            sop_uid=uid(uids.SC),
            series_number=SC_SERIES_NUMBER,
            manufacturer=MANUFACTURER,
            series_description=description("Spine overlay", card),
            software_versions=software,
            display_image=display_image,
        )

    # the SR (pure Python) is built in a second thread while this one builds the SEG and the SC (mostly
    # numpy, which releases the GIL). Those two stay on the caller's thread: highdicom's image objects keep
    # an SQLite connection usable only from the thread that made them.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sr-writer") as pool:
        running = pool.submit(_timed, report)
        built = {"seg": _timed(segmentation)} if prediction.quality.reliable else {}
        built["sc"] = _timed(overlay)
        built["sr"] = running.result()  # the SR writer's error, if any, is raised here
    seg = built["seg"][0] if "seg" in built else None
    sr, sc = built["sr"][0], built["sc"][0]
    stamp([ds for ds in (seg, sr, sc) if ds is not None], card, MANUFACTURER, software, started or datetime.now())
    return Outputs(seg=seg, sr=sr, sc=sc, timings_ms={f"build_{kind}": ms for kind, (_, ms) in built.items()})


def _read(ds: Dataset, elem: object) -> None:
    """``Dataset.walk`` callback: nothing (walking parses each raw element once)."""


def _timed(build: Callable[[], Dataset]) -> tuple[Dataset, float]:
    t0 = time.perf_counter()
    ds = build()
    return ds, round((time.perf_counter() - t0) * 1000, 1)


def evidence_of(source: Dataset, series_uid: str, sop_uid: str) -> Dataset:
    """What the SR lists of the SEG among its evidence (class, instance, series, study): the SR is built
    beside the SEG, not after it, from the SEG's deterministic UIDs."""
    ref = Dataset()
    ref.SOPClassUID = SegmentationStorage
    ref.SOPInstanceUID = sop_uid
    ref.SeriesInstanceUID = series_uid
    ref.StudyInstanceUID = source.StudyInstanceUID
    return ref


__all__ = ["MANUFACTURER", "Outputs", "build_outputs", "description", "disclaimer", "evidence_of"]

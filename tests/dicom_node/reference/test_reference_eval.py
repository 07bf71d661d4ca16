"""Reference segmentations for real: dcmtk storescu sends a phantom DX and a reader's SEG to the node.

The reference SEG is built with highdicom from the phantom's ground-truth mask (segments in another order
than ours, MANUAL, another manufacturer). The evaluation SR that reaches dcmtk storescp must carry the
Dice and Jaccard this test computes on its own from our SEG's pixels and the truth, pass dciodvfy, and
the comparisons must show in ``spinenode metrics --json``. The node's own SEGs are never references.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom_node import cli
from dicom_node.audit.records import (
    ComparisonRecord,
    DeliveryState,
    JobRecord,
    JobState,
    OutputKind,
    OutputRecord,
    ReceivedSegRecord,
    ReferenceState,
)
from dicom_node.config import Destination, NodeConfig
from dicom_node.dimse.scp import Refusal
from dicom_node.dimse.status import StoreStatus
from dicom_node.reference.compare import matching_segments, read_segmentation
from dicom_node.reference.metrics import aggregate, format_metrics
from dicom_node.roles.node import Node
from dicom_node.storage import dataset_bytes
from dicom_node.writers.evaluation_sr import DICE, INTERSECTION_PIXELS, JACCARD, PREDICTED_PIXELS, REFERENCE_PIXELS
from dicom_node.writers.seg import SPINE_SEGMENT, T1_SEGMENT
from inference.data.phantom import make_phantom
from tests.conftest import StoreSCP, free_port, make_tiny_model, session_models, storescu, wait_until
from tests.dciodvfy import dciodvfy_errors
from tests.dicom_node.outputs import PHANTOM_HEIGHT, SPINE_CODE, T1_CODE, reference_seg, truth

pytestmark = pytest.mark.slow  # a node with dcmtk peers

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR3D_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
PHANTOM_SEEDS = (900000, 900001, 900002)  # the seeds of tests.conftest's phantom_files
SEGMENT_LABELS = {SPINE_CODE: "Spine", T1_CODE: "T1 vertebra"}
TOLERANCE = 1e-3
# A tiny random U-Net++ predicts every class somewhere (the default tiny model predicts only background,
# which would make every Dice trivially zero).
TINY_MODEL = "tiny-unetpp-test-model"
REQUIRED_CONTEXTS = ("-R",)  # storescu: propose the SOP class of the files (dcmtk's default list lacks SEG)


# --- helpers ------------------------------------------------------------------------------------------
def our_masks(seg_path: str | Path) -> dict[str, np.ndarray]:
    """Our SEG's masks by property type code, read with pydicom only (frame -> segment -> code)."""
    ds = dcmread(seg_path)
    frames = ds.pixel_array.reshape(-1, int(ds.Rows), int(ds.Columns))
    codes_by_number = {
        int(s.SegmentNumber): str(s.SegmentedPropertyTypeCodeSequence[0].CodeValue) for s in ds.SegmentSequence
    }
    masks: dict[str, np.ndarray] = {}
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence, strict=True):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        masks[codes_by_number[number]] = frame > 0
    return masks


def dice_jaccard(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float, int, int, int]:
    both = int(np.logical_and(pred, ref).sum())
    p, r = int(pred.sum()), int(ref.sum())
    return 2 * both / (p + r), both / (p + r - both), both, p, r


def sr_figures(sr_path: Path) -> dict[str, dict[str, float]]:
    """Measurement name -> value for each group of the evaluation SR, by finding type code."""
    sr = hd.sr.srread(sr_path)
    out: dict[str, dict[str, float]] = {}
    for group in sr.content.get_planar_roi_measurement_groups():
        out[group.finding_type.value] = {m.name.meaning: float(m.value) for m in group.get_measurements()}
    return out


def evidence_uids(ds: Dataset) -> set[str]:
    return {
        i.ReferencedSOPInstanceUID
        for s in ds.CurrentRequestedProcedureEvidenceSequence
        for r in s.ReferencedSeriesSequence
        for i in r.ReferencedSOPSequence
    }


def job_of(node: Node, source_uid: str) -> JobRecord | None:
    with node.db.session() as s:
        return next((j for j in s.scalars(select(JobRecord)) if j.instance.sop_instance_uid == source_uid), None)


def outputs_of(node: Node, job_id: int) -> dict[OutputKind, list[OutputRecord]]:
    with node.db.session() as s:
        found: dict[OutputKind, list[OutputRecord]] = {}
        for o in s.scalars(select(OutputRecord).where(OutputRecord.job_id == job_id)):
            found.setdefault(o.kind, []).append(o)
        return found


def reference_rows(node: Node, reference_uid: str) -> list[ReceivedSegRecord]:
    with node.db.session() as s:
        rows = s.scalars(select(ReceivedSegRecord))
        return [r for r in rows if r.instance.sop_instance_uid == reference_uid]


def reference_state(node: Node, reference_uid: str) -> ReferenceState | None:
    rows = reference_rows(node, reference_uid)
    return rows[0].state if rows else None


def comparisons_of(node: Node, reference_uid: str) -> dict[str, ComparisonRecord]:
    with node.db.session() as s:
        rows = s.scalars(select(ComparisonRecord).where(ComparisonRecord.reference_sop_uid == reference_uid))
        return {r.segment: r for r in rows}


def received_file(dest: StoreSCP, sop_uid: str) -> Path | None:
    """The file storescp wrote for ``sop_uid`` (it names files MODALITY.SOPInstanceUID)."""
    return next((p for p in dest.files() if p.name.endswith(f".{sop_uid}")), None)


def sent_ok(proc: object) -> bool:
    return getattr(proc, "returncode", 1) == 0


@pytest.mark.parametrize("spacing", ["ImagerPixelSpacing", "PixelSpacing", None])
def test_comparison_reads_our_seg_for_every_source_kind(tmp_path: Path, spacing: str | None) -> None:
    """Our SEG read back with highdicom and compared with a reader's, for a DX with Imager Pixel Spacing, with
    Pixel Spacing, and with no spacing at all; the evaluation SR is valid for each."""
    from dicom_node.reference.compare import compare
    from dicom_node.writers import build_outputs
    from dicom_node.writers.evaluation_sr import build_evaluation_report
    from inference.data.phantom_dicom import phantom_to_dataset
    from tests.dicom_node.outputs import fake_prediction, make_card

    seed = PHANTOM_SEEDS[0]
    phantom = make_phantom(seed, height=PHANTOM_HEIGHT)
    source = phantom_to_dataset(phantom)
    value = source.ImagerPixelSpacing
    del source.ImagerPixelSpacing
    if spacing is not None:
        setattr(source, spacing, value)
    source_path = tmp_path / "source.dcm"
    source.save_as(source_path, enforce_file_format=True)
    card = make_card(demo=False)
    outputs = build_outputs(source, fake_prediction(phantom, card, None), card, display_image=phantom.display_image())
    assert outputs.seg is not None
    seg_path = tmp_path / "seg.dcm"
    seg_path.write_bytes(dataset_bytes(outputs.seg))
    # our SEG and a reader's SEG made with highdicom both carry Pixel Measures without Slice Thickness,
    # which highdicom's segread refuses: the node reads SEGs with read_segmentation
    ours = read_segmentation(seg_path)
    reference = read_segmentation(reference_seg(source_path, seed, tmp_path))
    comparisons = compare(ours, reference, str(source.SOPInstanceUID))
    assert {c.spec.label: c.dice for c in comparisons} == {"Spine": 1.0, "T1 vertebra": 1.0}  # truth vs truth
    report = build_evaluation_report(source, ours, reference, comparisons, card)
    report_path = tmp_path / "eval.dcm"
    report_path.write_bytes(dataset_bytes(report))
    assert dciodvfy_errors(report_path) == []
    assert {figures[DICE.meaning] for figures in sr_figures(report_path).values()} == {1.0}


# --- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, dest: StoreSCP, models_root: Path) -> Iterator[Node]:
    os.environ["SPINENODE_MODELS_DIR"] = str(models_root)
    if not (models_root / TINY_MODEL).is_dir():
        make_tiny_model(models_root, TINY_MODEL, architecture="unetplusplus")
    cfg = NodeConfig(
        data_dir=tmp_path_factory.mktemp("eval-var"),
        port=free_port(),
        bind="127.0.0.1",
        model=TINY_MODEL,
        destinations=(Destination.parse(dest.destination),),
    )
    n = Node.compose(cfg, session_models())
    n.start()
    yield n
    n.stop()


@dataclass
class Evaluated:
    """One image and its reference, compared by the node."""

    seed: int
    source: Dataset
    reference: Path
    reference_uid: str
    job_id: int
    seg_path: str
    eval_sr_path: Path  # as received by the destination


def evaluate(node: Node, dest: StoreSCP, source_path: Path, seed: int, folder: Path, image_first: bool) -> Evaluated:
    """Send image and reference (in either order) with storescu; wait for the SR at the destination."""
    source = dcmread(source_path)
    reference = reference_seg(source_path, seed, folder)
    reference_uid = str(dcmread(reference).SOPInstanceUID)
    if image_first:
        assert sent_ok(storescu(node.port, source_path))
        wait_until(lambda: (job := job_of(node, source.SOPInstanceUID)) is not None and job.state == JobState.DONE)
        proc = storescu(node.port, reference, extra=REQUIRED_CONTEXTS)
        assert sent_ok(proc), proc.stdout + proc.stderr
    else:
        proc = storescu(node.port, reference, extra=REQUIRED_CONTEXTS)
        assert sent_ok(proc), proc.stdout + proc.stderr
        time.sleep(1.5)  # idle workers look for due references at least once a second
        assert reference_state(node, reference_uid) == ReferenceState.WAITING
        assert comparisons_of(node, reference_uid) == {}
        assert sent_ok(storescu(node.port, source_path))
    wait_until(lambda: reference_state(node, reference_uid) == ReferenceState.EVALUATED)
    job = job_of(node, source.SOPInstanceUID)
    assert job is not None
    outputs = outputs_of(node, job.id)
    [eval_sr] = outputs[OutputKind.EVAL_SR]
    wait_until(lambda: received_file(dest, eval_sr.sop_instance_uid) is not None)
    time.sleep(0.2)  # storescp names the file before it has finished writing it
    received = received_file(dest, eval_sr.sop_instance_uid)
    assert received is not None
    [seg] = outputs[OutputKind.SEG]
    return Evaluated(seed, source, reference, reference_uid, job.id, seg.path, received)


@pytest.fixture(scope="module")
def after_image(node: Node, dest: StoreSCP, phantom_files: list[Path], tmp_path_factory) -> Evaluated:  # type: ignore[no-untyped-def]
    return evaluate(node, dest, phantom_files[0], PHANTOM_SEEDS[0], tmp_path_factory.mktemp("ref0"), True)


@pytest.fixture(scope="module")
def before_image(node: Node, dest: StoreSCP, phantom_files: list[Path], tmp_path_factory) -> Evaluated:  # type: ignore[no-untyped-def]
    return evaluate(node, dest, phantom_files[1], PHANTOM_SEEDS[1], tmp_path_factory.mktemp("ref1"), False)


# --- tests --------------------------------------------------------------------------------------------
def check_evaluation(node: Node, e: Evaluated) -> None:
    """The SR's and the audit's figures equal the test's own computation from our SEG and the truth."""
    ours, true = our_masks(e.seg_path), truth(e.seed)
    figures = sr_figures(e.eval_sr_path)
    recorded = comparisons_of(node, e.reference_uid)
    assert set(figures) == {SPINE_CODE, T1_CODE} and set(recorded) == set(SEGMENT_LABELS.values())
    for code, label in SEGMENT_LABELS.items():
        dice, jaccard, both, predicted, reference = dice_jaccard(ours[code], true[code])
        assert 0 < both < predicted  # a real overlap, not a trivial zero or identity
        got = figures[code]
        assert got[DICE.meaning] == pytest.approx(dice, abs=TOLERANCE)
        assert got[JACCARD.meaning] == pytest.approx(jaccard, abs=TOLERANCE)
        assert (got[PREDICTED_PIXELS.meaning], got[REFERENCE_PIXELS.meaning]) == (predicted, reference)
        assert got[INTERSECTION_PIXELS.meaning] == both
        row = recorded[label]
        assert row.dice == pytest.approx(dice, abs=TOLERANCE) and row.jaccard == pytest.approx(jaccard, abs=TOLERANCE)
        assert (row.predicted_pixels, row.reference_pixels, row.intersection_pixels) == (predicted, reference, both)
        assert row.model == TINY_MODEL and row.source_sop_uid == e.source.SOPInstanceUID
        assert row.job_id == e.job_id and row.model_version and len(row.model_version) == 12


def test_reference_after_image_gives_true_dice_in_a_valid_sr(node: Node, after_image: Evaluated) -> None:
    check_evaluation(node, after_image)
    sr = dcmread(after_image.eval_sr_path)
    assert sr.SOPClassUID == SR3D_CLASS and dciodvfy_errors(after_image.eval_sr_path) == []
    assert sr.StudyInstanceUID == after_image.source.StudyInstanceUID
    assert sr.SeriesInstanceUID not in {
        after_image.source.SeriesInstanceUID,
        dcmread(after_image.seg_path).SeriesInstanceUID,
    }
    our_seg_uid = str(dcmread(after_image.seg_path).SOPInstanceUID)
    assert {after_image.source.SOPInstanceUID, our_seg_uid, after_image.reference_uid} <= evidence_uids(sr)
    encoded = after_image.eval_sr_path.read_bytes()
    assert TINY_MODEL.encode() in encoded and b"NOT FOR DIAGNOSTIC USE" in encoded  # the tiny model is a demo
    outputs = outputs_of(node, after_image.job_id)
    wait_until(lambda: all(d.state == DeliveryState.DELIVERED for d in _deliveries(node, after_image.job_id)))
    assert {OutputKind.SEG, OutputKind.SR, OutputKind.SC, OutputKind.EVAL_SR} == set(outputs)


def _deliveries(node: Node, job_id: int) -> list:  # type: ignore[type-arg]
    with node.db.session() as s:
        return [d for o in s.scalars(select(OutputRecord).where(OutputRecord.job_id == job_id)) for d in o.deliveries]


def test_reference_before_image_is_matched_when_the_job_finishes(node: Node, before_image: Evaluated) -> None:
    check_evaluation(node, before_image)
    assert dciodvfy_errors(before_image.eval_sr_path) == []


def test_own_segs_are_never_references(node: Node, after_image: Evaluated, tmp_path: Path) -> None:
    own = dcmread(after_image.seg_path)
    path = tmp_path / "own.dcm"
    own.save_as(path)
    proc = storescu(node.port, path, extra=REQUIRED_CONTEXTS)  # our SEG, sent back as a PACS would
    assert sent_ok(proc), proc.stdout + proc.stderr
    [row] = reference_rows(node, own.SOPInstanceUID)
    assert row.state == ReferenceState.OWN_OUTPUT and "output seg of job" in (row.detail or "")
    # Re-saved elsewhere: new UIDs (rule 2: our Manufacturer), then another manufacturer too (rule 3:
    # every segment AUTOMATIC by a model this node runs). Received in-process through the same receiver.
    resaved = dcmread(after_image.seg_path)
    for reason in ("Manufacturer is SpineNode", "every segment is AUTOMATIC"):
        resaved.SOPInstanceUID = resaved.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        resaved.SeriesInstanceUID = generate_uid()
        result = node.receiver.receive(resaved, dataset_bytes(resaved), SEG_CLASS, "SPINENODE", "PACS")
        assert result.status is StoreStatus.SUCCESS
        [row] = reference_rows(node, resaved.SOPInstanceUID)
        assert row.state == ReferenceState.OWN_OUTPUT and reason in (row.detail or "")
        resaved.Manufacturer = "Some PACS"
    # Re-exported by OHIF without edits: every segment SEMIAUTOMATIC, so only the comparison can tell.
    for segment in resaved.SegmentSequence:
        segment.SegmentAlgorithmType = "SEMIAUTOMATIC"
    resaved.SOPInstanceUID = resaved.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    assert node.receiver.receive(resaved, dataset_bytes(resaved), SEG_CLASS, "SPINENODE", "PACS").job_id is None
    wait_until(lambda: reference_state(node, resaved.SOPInstanceUID) == ReferenceState.OWN_OUTPUT)
    [row] = reference_rows(node, resaved.SOPInstanceUID)
    assert "identical to our SEG" in (row.detail or "")
    with node.db.session() as s:
        compared = set(s.scalars(select(ComparisonRecord.reference_sop_uid)))
    assert own.SOPInstanceUID not in compared and resaved.SOPInstanceUID not in compared


def test_reference_without_our_segment_types_is_unusable(
    node: Node, after_image: Evaluated, phantom_files: list[Path], tmp_path: Path
) -> None:
    path = reference_seg(phantom_files[0], PHANTOM_SEEDS[0], tmp_path, kinds=("rib",))
    ds = dcmread(path)
    assert node.receiver.receive(ds, path.read_bytes(), SEG_CLASS, "SPINENODE", "PACS").status is StoreStatus.SUCCESS
    wait_until(lambda: reference_state(node, ds.SOPInstanceUID) == ReferenceState.UNUSABLE)
    [row] = reference_rows(node, ds.SOPInstanceUID)
    assert "no reference segment of a type we predict" in (row.detail or "")
    # visible where an administrator looks: spinenode metrics and spinenode audit
    from dicom_node.audit.report import audit_report, format_audit
    from dicom_node.reference.metrics import metrics_report

    listed = {r["reference_sop_uid"]: r for r in metrics_report(node.db, 10, 0.5)["not_compared"]}
    assert listed[ds.SOPInstanceUID]["state"] == "unusable"
    assert "no reference segment" in listed[ds.SOPInstanceUID]["reason"]
    audit = audit_report(node.db)
    assert any(
        e["kind"] == "reference_unusable" and e["sop_instance_uid"] == ds.SOPInstanceUID for e in audit["events"]
    )
    assert "reference_unusable" in format_audit(audit)


def test_seg_without_source_image_is_refused(node: Node, after_image: Evaluated) -> None:
    ds = dcmread(after_image.reference)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    del ds.ReferencedSeriesSequence, ds.SourceImageSequence
    for frame in ds.PerFrameFunctionalGroupsSequence:
        del frame.DerivationImageSequence
    with pytest.raises(Refusal) as refused:
        node.receiver.receive(ds, dataset_bytes(ds), SEG_CLASS, "SPINENODE", "PACS")
    assert refused.value.status is StoreStatus.CANNOT_UNDERSTAND and "no source image" in refused.value.comment


def test_metrics_cli_reports_the_comparisons(
    node: Node, after_image: Evaluated, before_image: Evaluated, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = str(node.config.data_dir)
    assert cli.main(["metrics", "--json", "--data-dir", data_dir, "--alert-below", "1.0"]) == 0
    report = json.loads(capsys.readouterr().out)
    by_segment = {a["segment"]: a for a in report["accuracy"] if a["model"] == TINY_MODEL}
    assert set(by_segment) == set(SEGMENT_LABELS.values())
    for label, figures in by_segment.items():
        rows = [comparisons_of(node, e.reference_uid)[label] for e in (after_image, before_image)]
        assert figures["count"] == len(rows) == 2
        assert figures["dice"]["mean"] == pytest.approx(np.mean([r.dice for r in rows]), abs=TOLERANCE)
        both = sum(r.intersection_pixels for r in rows)
        total = sum(r.predicted_pixels + r.reference_pixels for r in rows)
        assert figures["summed"]["dice"] == pytest.approx(2 * both / total, abs=TOLERANCE)
    assert len(report["alerts"]) == 2  # a random tiny model is below a Dice of 1.0 on both segments
    assert report["received_segs"][ReferenceState.EVALUATED.value] == 2
    assert cli.main(["metrics", "--data-dir", data_dir, "--model", "no-such-model"]) == 0
    assert "no comparisons yet" in capsys.readouterr().out


# --- matching and aggregation (no node) ---------------------------------------------------------------
def test_segments_match_by_property_type_else_by_label(phantom_files: list[Path]) -> None:
    """Types decide; a generic "Tissue" segment (OHIF's default) matches by its label; others never."""
    source = dcmread(phantom_files[0])
    mask = truth(PHANTOM_SEEDS[0])[SPINE_CODE]
    tissue = hd.sr.CodedConcept("85756007", "SCT", "Tissue")
    kinds = [(codes.SCT.Rib, "Spine bits"), (tissue, " T1 "), (tissue, "Spine"), (codes.SCT.Spine, "x"), (tissue, "L5")]
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=np.stack([mask] * len(kinds), axis=-1)[None],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=n,
                segment_label=label,
                segmented_property_category=codes.SCT.AnatomicalStructure,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
            for n, (kind, label) in enumerate(kinds, start=1)
        ],
        series_instance_uid=hd.UID(),
        series_number=1,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="Viewer",
        manufacturer_model_name="Viewer",
        software_versions="1",
        device_serial_number="1",
    )
    assert matching_segments(seg) == {SPINE_SEGMENT: (3, 4), T1_SEGMENT: (2,)}


# --- aggregation (no node) ----------------------------------------------------------------------------
def _row(model: str, segment: str, both: int, predicted: int, reference: int) -> ComparisonRecord:
    union = predicted + reference - both
    return ComparisonRecord(
        model=model,
        model_version="v1",
        segment=segment,
        dice=2 * both / (predicted + reference) if predicted + reference else None,
        jaccard=both / union if union else None,
        intersection_pixels=both,
        predicted_pixels=predicted,
        reference_pixels=reference,
    )


def test_aggregation_statistics_summed_figures_and_alert() -> None:
    # Per-image Dice 1.0, 0.5, 0.0 (and one empty pair without Dice) for Spine; one perfect T1.
    rows = [
        _row("m", "Spine", 10, 10, 10),
        _row("m", "Spine", 5, 10, 10),
        _row("m", "Spine", 0, 10, 90),
        _row("m", "Spine", 0, 0, 0),
        _row("m", "T1 vertebra", 4, 4, 4),
    ]
    report = aggregate(rows, recent=2, alert_below=0.7)
    spine, t1 = report["accuracy"][0], report["accuracy"][1]
    assert (spine["segment"], spine["count"], t1["count"]) == ("Spine", 4, 1)
    assert spine["dice"]["mean"] == pytest.approx(0.5) and spine["dice"]["median"] == pytest.approx(0.5)
    assert spine["dice"]["p5"] == pytest.approx(0.05)  # linear interpolation between 0.0 and 0.5
    assert spine["jaccard"]["mean"] == pytest.approx((1 + 1 / 3 + 0) / 3, abs=1e-4)
    assert spine["summed"]["dice"] == pytest.approx(2 * 15 / 140, abs=1e-4)  # sums, not a mean of ratios
    assert spine["summed"]["jaccard"] == pytest.approx(15 / (140 - 15), abs=1e-4)
    assert spine["recent"] == {"n": 2, "mean_dice": 0.25} and spine["alert"] and not t1["alert"]
    assert report["alerts"] == ["ALERT: m (v1) Spine: mean Dice of the last 2 comparison(s) is 0.250, below 0.700"]
    text = format_metrics({**report, "received_segs": {"evaluated": 5}})
    assert "ALERT: m (v1) Spine" in text and "received SEGs: 5 evaluated" in text
    assert aggregate([], recent=20, alert_below=0.7)["accuracy"] == []

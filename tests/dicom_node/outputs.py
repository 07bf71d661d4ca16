"""Helpers shared by the output tests: a model card, predictions equal to the truth, a reader's SEG."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom import dcmread
from pydicom.sr.codedict import codes

from dicom_node.storage import dataset_bytes
from inference.analysis.measure import measure
from inference.data.phantom import Phantom, make_phantom
from inference.model_card import ModelCard
from inference.prediction import Prediction, class_stats
from tests.radiographs import Radiograph

WEIGHTS = "ab" * 32
OTHER_WEIGHTS = "cd" * 32
PHANTOM_HEIGHT = 640  # the height of tests.conftest's phantom files
SPINE_CODE, T1_CODE = "421060004", "64864005"


def make_card(weights: str = WEIGHTS, demo: bool = True) -> ModelCard:
    return ModelCard(
        name="test-model",
        display_name="Test model",
        architecture="unet",
        encoder=None,
        input_size=(64, 32),
        weights_sha256=weights,
        demo=demo,
    )


def fake_prediction(p: Phantom, card: ModelCard, spacing: tuple[float, float] | None) -> Prediction:
    """A prediction equal to the true mask, with the mirrored mask standing in for the flipped run."""
    confidence = np.where(p.mask == 2, 0.9, np.where(p.mask == 1, 0.7, 0.6)).astype(np.float32)  # per class
    stats = class_stats(p.mask, confidence, spacing, np.ascontiguousarray(p.mask[:, ::-1]))
    return Prediction(p.mask, confidence, stats, card.name, card.version, card.demo, 0.0)


def prediction_of(radiograph: Radiograph, levels: np.ndarray) -> Prediction:
    """A prediction equal to ``levels`` (true labels), with its measurements."""
    labels = radiograph.truth
    confidence = np.full(labels.shape, 0.9, np.float32)
    stats = class_stats(labels, confidence, None, np.ascontiguousarray(labels[:, ::-1]))
    card = make_card(demo=False)
    return Prediction(
        labels, confidence, stats, card.name, card.version, False, 0.0, levels=levels, measurements=measure(levels)
    )


def truth(seed: int) -> dict[str, np.ndarray]:
    """The phantom's true masks of our two segments, by property type code."""
    mask = make_phantom(seed, height=PHANTOM_HEIGHT).mask
    return {SPINE_CODE: mask > 0, T1_CODE: mask == 2}


def reference_seg(source_path: Path, seed: int, out: Path, kinds: tuple[str, ...] = (T1_CODE, SPINE_CODE)) -> Path:
    """A reader's SEG of the true masks: MANUAL segments in ``kinds`` order, a viewer as manufacturer."""
    source = dcmread(source_path)
    masks = truth(seed)
    property_types = {SPINE_CODE: codes.SCT.Spine, T1_CODE: codes.SCT.T1Vertebra, "rib": codes.SCT.Rib}
    planes = [masks.get(kind, np.zeros_like(masks[SPINE_CODE])) for kind in kinds]
    if "rib" in kinds:
        planes[kinds.index("rib")][:10, :10] = True
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=np.stack(planes, axis=-1)[None],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=f"reader {kind}",
                segmented_property_category=codes.SCT.AnatomicalStructure,
                segmented_property_type=property_types[kind],
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
            for number, kind in enumerate(kinds, start=1)
        ],
        series_instance_uid=hd.UID(),
        series_number=300,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="Reading room viewer",
        manufacturer_model_name="Viewer",
        software_versions="1.0",
        device_serial_number="1",
    )
    path = out / f"reference-{seg.SOPInstanceUID}.dcm"
    path.write_bytes(dataset_bytes(seg))
    return path

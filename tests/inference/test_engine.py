"""Phantom, preprocessing, prediction figures, metrics, data loaders and a few real training steps."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom import dcmread

from inference.analysis.metrics import OverlapSummary, overlap
from inference.classes import SpineClass
from inference.data.datasets import DataSource, DataSpecError, split_indices
from inference.data.phantom import T1_INDEX, make_phantom, unit_image
from inference.engine import Engine, class_stats, labels_at_native
from inference.learning.training import TrainConfig, evaluate_engine, train
from inference.model_card import find_card
from inference.preprocess import UnusableImageError, from_dataset, from_image_file, to_model_input, window_to_unit


def test_phantom_is_deterministic_and_plausible() -> None:
    a, b = make_phantom(7), make_phantom(7)
    assert np.array_equal(a.pixels, b.pixels) and np.array_equal(a.mask, b.mask)
    assert a.cobb_angle_deg == b.cobb_angle_deg
    h, w = a.pixels.shape
    assert 2 <= h / w <= 7.5 and a.pixels.max() < 4096
    assert 0 <= a.cobb_angle_deg <= 61
    # T1 is one vertebra: a single connected blob below the cervical column
    n, _ = cv2.connectedComponents((a.mask == SpineClass.T1).astype(np.uint8))
    assert n == 2
    assert (a.mask == SpineClass.V).sum() > 10 * (a.mask == SpineClass.T1).sum()
    assert not np.array_equal(make_phantom(8).pixels.shape, a.pixels.shape) or not np.array_equal(
        make_phantom(8).pixels, a.pixels
    )
    assert T1_INDEX == 5  # C3..C7 come first


def test_phantoms_cover_scoliosis_range_and_monochrome1() -> None:
    ph = [make_phantom(s, height=500) for s in range(40)]
    cobbs = [p.cobb_angle_deg for p in ph]
    assert min(cobbs) < 10 and max(cobbs) > 40
    assert {"MONOCHROME1", "MONOCHROME2"} <= {p.photometric for p in ph}


def test_dicom_preprocessing_matches_phantom_truth(phantom_files: list[Path]) -> None:
    for path in phantom_files:
        ds = dcmread(path)
        prepared = from_dataset(ds)
        seed = int(path.stem.split("-")[1])
        expected = unit_image(make_phantom(seed, height=640))
        assert np.abs(prepared.image - expected).max() < 1e-5
        # bone (the vertebral bodies) is brighter than the background whatever the photometric
        mask = make_phantom(seed, height=640).mask
        assert prepared.image[mask > 0].mean() > prepared.image[mask == 0].mean()


def test_monochrome1_is_inverted_once(phantom_files: list[Path]) -> None:
    ds = dcmread(phantom_files[0])
    normal = from_dataset(ds).image
    ds.PhotometricInterpretation = "MONOCHROME1" if ds.PhotometricInterpretation == "MONOCHROME2" else "MONOCHROME2"
    if "PresentationLUTShape" in ds:
        del ds.PresentationLUTShape
    flipped = from_dataset(ds).image
    assert np.allclose(normal, 1 - flipped, atol=1e-6)


def test_window_formula_is_dicom_linear() -> None:
    v = np.array([0, 1000, 2000], np.float32)
    assert np.allclose(window_to_unit(v, 1000.5, 2001), [0.0, 0.5, 1.0], atol=1e-3)


def test_png_jpeg_and_garbage(tmp_path: Path) -> None:
    img = (np.linspace(0, 255, 64 * 32).reshape(64, 32)).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    cv2.imwrite(str(tmp_path / "b.jpg"), cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))
    assert from_image_file(tmp_path / "a.png").image.max() == pytest.approx(1.0)
    assert "colour" in from_image_file(tmp_path / "b.jpg").notes[0]
    (tmp_path / "c.png").write_bytes(b"not an image")
    with pytest.raises(UnusableImageError):
        from_image_file(tmp_path / "c.png")
    cv2.imwrite(str(tmp_path / "tiny.png"), img[:4, :4])
    with pytest.raises(UnusableImageError, match="too small"):
        from_image_file(tmp_path / "tiny.png")
    x = to_model_input(img.astype(np.float32) / 255, (32, 16))
    assert x.shape == (3, 32, 16) and np.array_equal(x[0], x[2])


def test_labels_at_native_resizes_probabilities_then_argmax() -> None:
    probs = np.zeros((3, 4, 2), np.float32)
    probs[0] = 1
    probs[:, 1:3, :] = 0
    probs[1, 1:3, :] = 0.9
    probs[0, 1:3, :] = 0.1
    labels, conf = labels_at_native(probs, (8, 4))
    assert labels.shape == (8, 4) and set(np.unique(labels)) == {0, 1}
    assert (labels[2:6] == 1).all() and (labels[[0, 7]] == 0).all()  # where the class is, scaled by 2
    assert conf.max() <= 1.0


def test_class_stats_area_confidence_and_flip_agreement() -> None:
    labels = np.zeros((10, 10), np.uint8)
    labels[2:6, 2:6] = SpineClass.V
    labels[7, 7] = SpineClass.T1
    conf = np.full((10, 10), 0.5, np.float32)
    conf[2:6, 2:6] = 0.9
    flipped = labels.copy()
    flipped[2:6, 2] = 0
    stats = class_stats(labels, conf, (0.5, 0.2), flipped)
    v = stats["V"]
    assert v.pixels == 16 and v.coverage_percent == pytest.approx(16.0)
    assert v.area == pytest.approx(16 * 0.1) and v.area_unit == "mm2"
    assert v.mean_confidence == pytest.approx(0.9)
    assert v.flip_dice == pytest.approx(2 * 12 / 28)
    assert v.flip_jaccard == pytest.approx(12 / 16)
    assert class_stats(labels, conf, None)["T1"].area_unit == "pixels"
    spine = stats["Spine"]  # the union V or T1, with its own flip agreement (the SEG's first segment)
    assert spine.pixels == 17 and spine.flip_jaccard == pytest.approx(13 / 17)


def test_metrics_sum_over_set_and_refuse_empty() -> None:
    ref = np.zeros((4, 4), np.uint8)
    ref[:2] = 1
    pred = np.zeros((4, 4), np.uint8)
    pred[:1] = 1
    ov = overlap(pred == 1, ref == 1)
    assert (ov.iou, ov.dice) == (0.5, pytest.approx(2 / 3))
    assert overlap(pred == 2, ref == 2).iou is None  # nothing to compare: no number invented
    summary = OverlapSummary()
    summary.add(pred, ref)
    summary.add(ref, ref)
    out = summary.to_json()
    assert out["V"]["iou"] == pytest.approx(12 / 16)  # (4 + 8) / (8 + 8)
    assert out["V"]["iou_mean_per_image"] == pytest.approx(0.75)
    assert out["T1"]["iou"] is None


def test_split_is_70_15_15_and_fixed() -> None:
    tr, va, te = split_indices(100)
    assert (len(tr), len(va), len(te)) == (70, 15, 15)
    assert sorted(tr + va + te) == list(range(100))
    assert split_indices(100) == (tr, va, te)


def test_coco_loader_reads_seed_format(tmp_path: Path) -> None:
    img = np.zeros((60, 40), np.uint8)
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "imgs" / "sub" / "x.png"), img)
    cv2.imwrite(str(tmp_path / "imgs" / "y.png"), img)
    ann = {
        "images": [
            {"id": 1, "toras_path": "/sub/x.png", "file_name": "ignored.png", "width": 40, "height": 60},
            {"id": 2, "file_name": "y.png"},
        ],
        "categories": [{"id": 1, "name": "spine"}],
        "annotations": [
            {"id": 1, "image_id": 1, "name": "V", "segmentation": [[5, 5, 30, 5, 30, 50, 5, 50]]},
            {"id": 2, "image_id": 1, "name": "T1", "segmentation": [[5, 5, 30, 5, 30, 15, 5, 15]]},
            {"id": 3, "image_id": 2, "name": "F", "segmentation": [[0, 0, 10, 0, 10, 10]]},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    src = DataSource.parse(f"coco:{tmp_path / 'ann.json'}:{tmp_path / 'imgs'}")
    samples = list(src.load())
    assert src.count == 2 and len(samples) == 2
    m = samples[0].mask
    assert m[10, 10] == SpineClass.T1 and m[30, 10] == SpineClass.V and m[55, 35] == SpineClass.F
    assert samples[1].mask.max() == 0


@pytest.mark.parametrize("spec", ["phantom:x", "phantom:0", "coco:missing.json:/nowhere", "mystery:1"])
def test_bad_data_specs(spec: str) -> None:
    with pytest.raises(DataSpecError):
        DataSource.parse(spec)


@pytest.mark.slow
def test_training_runs_and_writes_a_loadable_card(tmp_path: Path) -> None:
    cfg = TrainConfig(
        architecture="deeplabv3plus_dense",
        encoder="mobilenet_v2",
        data="phantom:8",
        out=tmp_path / "t",
        max_steps=3,
        epochs=5,
        input_size=(96, 32),
        name="t",
        threads=2,
    )
    card = train(cfg)
    again = find_card("t", tmp_path)
    assert again.weights_sha256 == card.weights_sha256 and len(card.weights_sha256) == 64
    assert again.training["recipe"]["steps"] == 3 and again.training["split"]["train"] == 6
    assert "test_split" in again.metrics and again.cpu_forward_ms and again.cpu_forward_ms > 0
    result = evaluate_engine(Engine(again), list(DataSource.parse("phantom:2", 123).load()), progress=False)
    assert result["n_images"] == 2 and set(result["per_class"]) == {"V", "T1"}


def test_calibration_offsets_never_lower_the_calibration_score(models_root: Path) -> None:
    from inference.calibration import calibrate

    engine = Engine(find_card("tiny-test-model", models_root))
    result = calibrate(engine, n=2, seed=600000)
    assert len(result.offsets) == 3 and result.offsets[0] == 0.0
    assert result.after["V"] + result.after["T1"] >= result.before["V"] + result.before["T1"]
    # the offsets it chose give the score it reported: an engine carrying them starts from that score
    import dataclasses

    shifted = Engine(dataclasses.replace(engine.card, logit_offsets=list(result.offsets)))
    again = calibrate(shifted, n=2, seed=600000)
    assert again.before == pytest.approx(result.after, abs=1e-3)


def test_the_mirror_average_is_the_mean_of_the_image_and_its_mirror(models_root: Path) -> None:
    """With ``mirror_average`` the labels are the argmax of the mean of the image's and the flipped-back
    mirror's class probabilities; without the mirror pass they are the image's own."""
    import dataclasses

    from inference.preprocess import PreparedImage

    card = find_card("demo-unetplusplus", models_root)  # phantom-trained: it finds the phantom's column
    averaging = Engine(dataclasses.replace(card, mirror_average=True), runtime="torch")
    plain = Engine(card, runtime="torch")
    image = unit_image(make_phantom(600100, height=320))
    x = to_model_input(image, card.input_size)
    own, mirror = averaging.probabilities(np.ascontiguousarray(np.stack([x, x[:, :, ::-1]])))
    expected, _ = labels_at_native(0.5 * (own + mirror[:, :, ::-1]), image.shape)
    alone, _ = labels_at_native(own, image.shape)
    assert np.array_equal(averaging.predict(PreparedImage(image)).labels, expected)
    assert np.array_equal(averaging.predict(PreparedImage(image), flip_agreement=False).labels, alone)
    assert np.array_equal(plain.predict(PreparedImage(image)).labels, alone)
    assert (alone > 0).any() and not np.array_equal(expected, alone)  # the average changed some pixels

"""A second, independent validator: PixelMed's DicomInstanceValidator and DicomSRValidator on every object
the node writes (SEG, SR, overlay SC, evaluation SR, and the SR and SC of an unreliable prediction).

Zero errors beyond the three ``tests.pixelmed.KNOWN_DEFECTS`` (PixelMed contradicting the standard and
dciodvfy), which are pinned here: when a PixelMed release stops reporting one, this test says so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.reference.compare import compare
from dicom_node.writers import build_outputs
from dicom_node.writers.evaluation_sr import build_evaluation_report
from inference.data.phantom import make_phantom
from inference.data.phantom_dicom import phantom_to_dataset
from inference.prediction import Quality
from tests.dciodvfy import dciodvfy_errors
from tests.dicom_node.outputs import fake_prediction, make_card
from tests.pixelmed import KNOWN_DEFECTS, UNRECOGNISED, pixelmed_errors, pixelmed_lines, sr_errors

pytestmark = pytest.mark.slow

SEED = 940016  # 401 x 195: a SEG written as FRACTIONAL (BINARY would need a pad byte)
EVEN_SEED = 940020  # 409 x 136: a BINARY SEG
HEIGHT, EVEN_HEIGHT = 401, 409


def written(tmp_path: Path, seed: int, height: int, reliable: bool = True) -> dict[str, Path]:
    phantom = make_phantom(seed, height=height)
    card = make_card(demo=False)
    source = phantom_to_dataset(phantom)
    prediction = fake_prediction(phantom, card, (phantom.pixel_spacing_mm,) * 2)
    if not reliable:
        prediction.quality = Quality(False, ["no T1 found"])
    outputs = build_outputs(source, prediction, card, display_image=phantom.display_image())
    objects = dict(outputs.by_kind())
    if outputs.seg is not None:
        comparisons = compare(outputs.seg, outputs.seg, str(source.SOPInstanceUID))
        objects["eval_sr"] = build_evaluation_report(source, outputs.seg, outputs.seg, comparisons, card)
    paths = {}
    for kind, ds in objects.items():
        paths[kind] = tmp_path / f"{seed}-{reliable}-{kind}.dcm"
        ds.save_as(paths[kind], enforce_file_format=True)
        assert dciodvfy_errors(paths[kind]) == [], kind
    return paths


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pixelmed")
    paths = {f"fractional-{k}": p for k, p in written(folder, SEED, HEIGHT).items()}
    paths |= {f"binary-{k}": p for k, p in written(folder, EVEN_SEED, EVEN_HEIGHT).items()}
    paths |= {f"unreliable-{k}": p for k, p in written(folder, EVEN_SEED, EVEN_HEIGHT, reliable=False).items()}
    return paths


NAMES = [
    "fractional-seg",
    "fractional-sr",
    "fractional-sc",
    "fractional-eval_sr",
    "binary-seg",
    "binary-sr",
    "binary-sc",
    "binary-eval_sr",
    "unreliable-sr",
    "unreliable-sc",
]


@pytest.mark.parametrize("name", NAMES)
def test_instance_validator_finds_no_errors(objects: dict[str, Path], name: str) -> None:
    assert pixelmed_errors(objects[name]) == []
    if name.endswith("-sc"):  # a single-frame Secondary Capture is outside PixelMed's IOD rules
        assert any(UNRECOGNISED in line for line in pixelmed_lines(objects[name]))


@pytest.mark.parametrize("name", [n for n in NAMES if n.endswith("sr")])
def test_sr_validator_finds_no_errors_in_the_templates(objects: dict[str, Path], name: str) -> None:
    assert sr_errors(objects[name]) == []


def test_known_pixelmed_defects_still_occur(objects: dict[str, Path]) -> None:
    lines = pixelmed_lines(objects["binary-seg"])
    for name, pattern in KNOWN_DEFECTS.items():
        assert any(pattern.search(line) for line in lines), f"PixelMed no longer reports {name}: drop it"

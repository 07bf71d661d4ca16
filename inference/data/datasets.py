"""Labelled image sets for training and evaluation: the phantom and COCO-annotated radiographs.

A data spec is ``phantom:N`` (N phantoms, seeds ``seed .. seed+N-1``) or
``coco:ANNOTATIONS.json:IMAGE_DIR``. The COCO loader reads the seed dataset's format: each
annotation's class comes from its ``name`` (F, V or T1; falling back to the category name), the image
path from ``toras_path`` (leading slash stripped) or ``file_name``, segmentations are polygon lists, and
later polygons are drawn over earlier ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from inference.classes import SpineClass
from inference.data.phantom import make_phantom, unit_image
from inference.preprocess import from_image_file

SPLIT_SEED = 42
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)  # train / validation / test


@dataclass
class Sample:
    image: np.ndarray  # float32 [0, 1], native size
    mask: np.ndarray  # uint8 labels, native size
    name: str
    spacing_mm: tuple[float, float] | None = None


class DataSpecError(ValueError):
    """A --data/--coco argument that cannot be used."""


@dataclass
class DataSource:
    kind: str  # "phantom" or "coco"
    count: int
    seed: int = 0
    annotations: Path | None = None
    image_dir: Path | None = None

    @classmethod
    def parse(cls, spec: str, seed: int = 0) -> DataSource:
        kind, _, rest = spec.partition(":")
        if kind == "phantom":
            try:
                n = int(rest)
            except ValueError:
                raise DataSpecError(f"phantom data needs a count, e.g. phantom:200 (got {spec!r})") from None
            if n < 1:
                raise DataSpecError("phantom count must be at least 1")
            return cls("phantom", n, seed)
        if kind == "coco":
            ann, _, img_dir = rest.partition(":")
            if not ann or not img_dir:
                raise DataSpecError("coco data is coco:ANNOTATIONS.json:IMAGE_DIR")
            ann_path, dir_path = Path(ann), Path(img_dir)
            if not ann_path.is_file():
                raise DataSpecError(f"annotation file not found: {ann_path}")
            if not dir_path.is_dir():
                raise DataSpecError(f"image directory not found: {dir_path}")
            return cls("coco", len(_coco_images(ann_path)), seed, ann_path, dir_path)
        raise DataSpecError(f"unknown data spec {spec!r}: use phantom:N or coco:ANNOTATIONS.json:IMAGE_DIR")

    def describe(self) -> str:
        if self.kind == "phantom":
            return f"phantom:{self.count} (seeds {self.seed}..{self.seed + self.count - 1})"
        return f"coco:{self.annotations}:{self.image_dir} ({self.count} images)"

    def load(self, indices: list[int] | None = None) -> Iterator[Sample]:
        indices = list(range(self.count)) if indices is None else indices
        if self.kind == "phantom":
            for i in indices:
                p = make_phantom(self.seed + i)
                yield Sample(unit_image(p), p.mask, f"phantom-{self.seed + i}", (p.pixel_spacing_mm,) * 2)
        else:
            assert self.annotations is not None and self.image_dir is not None
            yield from _load_coco(self.annotations, self.image_dir, indices)


def split_indices(n: int, seed: int = SPLIT_SEED) -> tuple[list[int], list[int], list[int]]:
    """70/15/15 split of ``range(n)`` with a fixed seed (as the seed app did)."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_train = int(round(n * SPLIT_FRACTIONS[0]))
    n_val = int(round(n * SPLIT_FRACTIONS[1]))
    return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]


def _coco_images(ann_path: Path) -> list[dict]:
    data = json.loads(ann_path.read_text())
    return sorted(data.get("images", []), key=lambda im: im["id"])


def _image_path(image: dict, image_dir: Path) -> Path:
    rel = image.get("toras_path") or image.get("file_name")
    if not rel:
        raise DataSpecError(f"image {image.get('id')} has neither toras_path nor file_name")
    return image_dir / str(rel).lstrip("/")


def _load_coco(ann_path: Path, image_dir: Path, indices: list[int]) -> Iterator[Sample]:
    data = json.loads(ann_path.read_text())
    images = sorted(data.get("images", []), key=lambda im: im["id"])
    categories = {c["id"]: c.get("name") for c in data.get("categories", [])}
    by_image: dict[int, list[dict]] = {}
    for ann in sorted(data.get("annotations", []), key=lambda a: a.get("id", 0)):
        by_image.setdefault(ann["image_id"], []).append(ann)
    for i in indices:
        image = images[i]
        prepared = from_image_file(_image_path(image, image_dir))
        rows, cols = prepared.shape
        mask = np.zeros((rows, cols), np.uint8)
        for ann in by_image.get(image["id"], []):
            name = ann.get("name") or categories.get(ann.get("category_id"))
            if not isinstance(name, str) or name not in SpineClass.__members__:
                continue
            value = int(SpineClass[name])
            segs = ann.get("segmentation") or []
            for poly in segs if isinstance(segs, list) else []:
                pts = np.asarray(poly, np.float32).reshape(-1, 2)
                if len(pts) >= 3:
                    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], value)
        yield Sample(prepared.image, mask, str(image.get("file_name") or image["id"]))

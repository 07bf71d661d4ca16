"""The receiver-to-worker hand-over of decoded images is bounded and hands each image over once."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.dimse.decoded import DecodedCache
from inference.preprocess import PreparedImage


def _item() -> tuple[Dataset, PreparedImage]:
    return Dataset(), PreparedImage(np.zeros((4, 4), np.float32))


def test_oldest_entries_are_dropped_beyond_capacity() -> None:
    cache = DecodedCache(capacity=2)
    for job_id in (1, 2, 3):
        cache.put(job_id, *_item())
    assert cache.pop(1) is None  # dropped: that job reads its file
    assert cache.pop(2) is not None and cache.pop(3) is not None
    assert cache.pop(3) is None  # handed over once
    assert (cache.hits, cache.misses) == (2, 2)


def test_zero_capacity_keeps_nothing() -> None:
    cache = DecodedCache(capacity=0)
    cache.put(1, *_item())
    assert cache.pop(1) is None

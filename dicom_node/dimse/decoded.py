"""Decoded instances handed from the receiver to a worker in the same process (decode once).

The receiver decodes every image before acknowledging it (to refuse what cannot be used). It leaves the
parsed data set and the prepared grey image here, keyed by job, so that a worker in the same process
need not read and decode the file again. Bounded: under a backlog the oldest entries are dropped and
those jobs read their file, as do jobs recovered after a restart or run by a ``spinenode worker``
elsewhere.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from pydicom.dataset import Dataset

from inference.preprocess import PreparedImage

DECODED_CACHE_ITEMS = 4  # a 2500x1300 16-bit DX is ~20 MB parsed + prepared: ~80 MB at most


class DecodedCache:
    def __init__(self, capacity: int = DECODED_CACHE_ITEMS) -> None:
        self.capacity = capacity
        self._items: OrderedDict[int, tuple[Dataset, PreparedImage]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def put(self, job_id: int, ds: Dataset, prepared: PreparedImage) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._items[job_id] = (ds, prepared)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def pop(self, job_id: int) -> tuple[Dataset, PreparedImage] | None:
        with self._lock:
            item = self._items.pop(job_id, None)
            if item is None:
                self.misses += 1
            else:
                self.hits += 1
            return item

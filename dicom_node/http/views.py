"""Read-only views of the audit database for the REST API: one job in full, overlay thumbnails, and the
Prometheus text exposition of ``GET /metrics``. All blocking (SQLite, file reads): run in a thread pool.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydicom import dcmread
from sqlalchemy import case, func, select

from dicom_node.audit.records import (
    AuditDB,
    DeliveryAttempt,
    DeliveryRecord,
    DeliveryState,
    EventRecord,
    InstanceRecord,
    JobRecord,
    JobState,
    JobTransition,
    OutputKind,
    OutputRecord,
)
from dicom_node.audit.report import iso, job_view, with_outputs
from dicom_node.dimse.status import DELIVERED_STATUSES

THUMBNAIL_MAX_SIDE = 320  # pixels of the longer side of a job's overlay thumbnail
THUMBNAIL_CACHE = 256  # thumbnails kept in memory (they never change for a given output file)
# inference time histogram buckets, seconds (a CPU forward pass of the demo models is 0.05-2 s)
INFERENCE_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def job_detail(db: AuditDB, job_id: int) -> dict[str, Any] | None:
    """``spinenode audit``'s view of one job, with every delivery attempt; None when there is no such job."""
    with db.session() as s:
        job = s.scalar(with_outputs(select(JobRecord).where(JobRecord.id == job_id), attempt_log=True))
        if job is None:
            return None
        view = job_view(job)
        for out_view, out in zip(view["outputs"], job.outputs, strict=True):
            for d_view, d in zip(out_view["deliveries"], out.deliveries, strict=True):
                d_view["attempt_log"] = [
                    {"at": iso(a.at), "status": a.status, "error": a.error, "duration_ms": a.duration_ms}
                    for a in d.attempt_log
                ]
    return view


def output_path(db: AuditDB, job_id: int, kind: OutputKind) -> Path | None:
    """The file of one of a job's outputs (SEG, SR or SC), or None (none, or pruned)."""
    with db.session() as s:
        path = s.scalar(
            select(OutputRecord.path)
            .where(OutputRecord.job_id == job_id, OutputRecord.kind == kind, OutputRecord.pruned_at.is_(None))
            .limit(1)
        )
    return Path(path) if path and Path(path).is_file() else None


class Thumbnails:
    """PNG thumbnails of jobs' overlay Secondary Captures, rendered once and kept (LRU)."""

    def __init__(self, max_side: int = THUMBNAIL_MAX_SIDE, size: int = THUMBNAIL_CACHE) -> None:
        self.max_side = max_side
        self.size = size
        self._cache: OrderedDict[tuple[str, float], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def png(self, path: Path) -> bytes:
        key = (str(path), path.stat().st_mtime)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        data = self._render(path)
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return data

    def _render(self, path: Path) -> bytes:
        pixels = np.asarray(dcmread(path).pixel_array)
        if pixels.ndim == 2:
            pixels = cv2.cvtColor(pixels.astype(np.uint8), cv2.COLOR_GRAY2RGB)
        rows, cols = pixels.shape[:2]
        scale = min(1.0, self.max_side / max(rows, cols))
        if scale < 1.0:
            size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
            pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2BGR))
        if not ok:
            raise ValueError(f"could not encode a thumbnail of {path.name}")
        return buf.tobytes()


class Histogram:
    """An in-process Prometheus histogram (the inference time of uploads, which the database does not hold)."""

    def __init__(self, buckets: tuple[float, ...] = INFERENCE_BUCKETS_S) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.count = 0
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.count += 1
            self.sum += value
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    self.counts[i] += 1

    def snapshot(self) -> tuple[list[int], int, float]:
        with self._lock:
            return list(self.counts), self.count, self.sum


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}" if labels else ""


class _Text:
    """Prometheus text format 0.0.4, written by hand."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, **labels: str) -> None:
        text = repr(float(value)) if isinstance(value, float) else str(int(value))
        self.lines.append(f"{name}{_labels(labels)} {text}")

    def histogram(
        self, name: str, buckets: tuple[float, ...], counts: list[int], count: int, total: float, **labels: str
    ) -> None:
        for bound, n in zip(buckets, counts, strict=True):
            self.sample(f"{name}_bucket", n, **labels, le=repr(float(bound)))
        self.sample(f"{name}_bucket", count, **labels, le="+Inf")
        self.sample(f"{name}_sum", float(total), **labels)
        self.sample(f"{name}_count", count, **labels)


def prometheus_text(db: AuditDB, uploads: Histogram, models: list[dict[str, Any]], pruner: Any = None) -> str:
    """Counters from the audit database (they survive restarts), gauges of the queue and deliveries, and
    the inference time histograms of DICOM jobs (database) and uploads (this process)."""
    buckets_ms = [b * 1000 for b in INFERENCE_BUCKETS_S]
    with db.session() as s:

        def scalar(query: Any) -> int:
            return int(s.scalar(query) or 0)

        received = scalar(select(func.sum(InstanceRecord.times_received)))
        refused = scalar(select(func.count()).select_from(EventRecord).where(EventRecord.kind == "refused"))
        jobs = scalar(select(func.count()).select_from(JobRecord))
        processed = scalar(select(func.count()).select_from(JobTransition).where(JobTransition.state == JobState.DONE))
        failed = scalar(select(func.count()).select_from(JobTransition).where(JobTransition.state == JobState.FAILED))
        by_state = dict(s.execute(select(JobRecord.state, func.count()).group_by(JobRecord.state)).all())
        deliveries = dict(s.execute(select(DeliveryRecord.state, func.count()).group_by(DeliveryRecord.state)).all())
        attempts = scalar(select(func.count()).select_from(DeliveryAttempt))
        pruned = scalar(select(func.count()).select_from(EventRecord).where(EventRecord.kind == "pruned"))
        attempt_failures = scalar(
            select(func.count())
            .select_from(DeliveryAttempt)
            .where((DeliveryAttempt.status.is_(None)) | (DeliveryAttempt.status.not_in(sorted(DELIVERED_STATUSES))))
        )
        timed = JobRecord.inference_ms.is_not(None)
        hist_row = s.execute(
            select(
                func.count(),
                func.sum(JobRecord.inference_ms),
                *(func.sum(case((JobRecord.inference_ms <= b, 1), else_=0)) for b in buckets_ms),
            ).where(timed)
        ).one()
    t = _Text()
    t.family(
        "spinenode_instances_received_total", "counter", "DICOM instances accepted (C-STORE success), re-sends included"
    )
    t.sample("spinenode_instances_received_total", received)
    t.family("spinenode_instances_refused_total", "counter", "C-STORE requests refused with an error status")
    t.sample("spinenode_instances_refused_total", refused)
    t.family("spinenode_jobs_received_total", "counter", "segmentation jobs created for received images")
    t.sample("spinenode_jobs_received_total", jobs)
    t.family("spinenode_jobs_processed_total", "counter", "jobs finished with SEG, SR and SC written")
    t.sample("spinenode_jobs_processed_total", processed)
    t.family("spinenode_jobs_failed_total", "counter", "job runs that failed")
    t.sample("spinenode_jobs_failed_total", failed)
    t.family("spinenode_jobs", "gauge", "jobs by current state")
    for state in JobState:
        t.sample("spinenode_jobs", by_state.get(state, 0), state=state.value)
    t.family("spinenode_deliveries", "gauge", "output deliveries by current state")
    for dstate in DeliveryState:
        t.sample("spinenode_deliveries", deliveries.get(dstate, 0), state=dstate.value)
    t.family("spinenode_delivery_attempts_total", "counter", "C-STORE attempts to destinations")
    t.sample("spinenode_delivery_attempts_total", attempts)
    t.family(
        "spinenode_delivery_failures_total", "counter", "delivery attempts that did not deliver (error or refusal)"
    )
    t.sample("spinenode_delivery_failures_total", attempt_failures)
    t.family("spinenode_model_loaded", "gauge", "1 when the model is loaded in this process")
    for m in models:
        t.sample(
            "spinenode_model_loaded", 1 if m["loaded"] else 0, model=str(m["name"]), demo=str(bool(m["demo"])).lower()
        )
    t.family("spinenode_inference_seconds", "histogram", "model inference time per image (forward passes and resizing)")
    count, total_ms, *cumulative = hist_row
    t.histogram(
        "spinenode_inference_seconds",
        INFERENCE_BUCKETS_S,
        [int(n or 0) for n in cumulative],
        int(count or 0),
        float(total_ms or 0.0) / 1000,
        source="dicom",
    )
    counts, n, seconds = uploads.snapshot()
    t.histogram("spinenode_inference_seconds", uploads.buckets, counts, n, seconds, source="upload")
    t.family("spinenode_files_pruned_total", "counter", "files deleted by the retention policy (audited)")
    t.sample("spinenode_files_pruned_total", pruned)
    if pruner is not None:
        disk = pruner.status()
        t.family("spinenode_disk_free_bytes", "gauge", "free space on the data directory's file system")
        t.sample("spinenode_disk_free_bytes", int(disk["free_mb"] * 2**20))
        t.family("spinenode_disk_low", "gauge", "1 when free space is below [retention] warn_free_disk_mb")
        t.sample("spinenode_disk_low", int(disk["low"]))
        if disk["prunable_bytes"] is not None:
            t.family("spinenode_prunable_bytes", "gauge", "bytes the retention policy may delete now")
            t.sample("spinenode_prunable_bytes", disk["prunable_bytes"])
    return "\n".join(t.lines) + "\n"

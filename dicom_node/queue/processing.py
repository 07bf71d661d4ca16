"""Workers: take a job, segment its instance, write SEG + SR + SC durably, schedule their deliveries.

A job's outputs, their deliveries and its ``done`` state are committed in one transaction after the
files are on disk, so a crash at any point either leaves the job to be re-run (same deterministic UIDs)
or finished - never half-recorded. The same transaction makes the reference SEGs waiting for this image
due; workers compare due references (``dicom_node.reference.evaluation``) when no job is queued.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select

from dicom_node.audit.records import (
    AuditDB,
    DeliveryRecord,
    DeliveryState,
    JobRecord,
    JobState,
    OutputKind,
    OutputRecord,
)
from dicom_node.config import DEFAULT_CHARACTER_SET
from dicom_node.dimse.decoded import DecodedCache
from dicom_node.queue.jobs import JobQueue
from dicom_node.queue.lifecycle import set_state
from dicom_node.reference.evaluation import Evaluator
from dicom_node.reference.intake import mark_due
from dicom_node.storage import Storage, dataset_bytes, write_durably
from dicom_node.writers.outputs import build_outputs
from dicom_node.writers.source import pixel_spacing_mm
from inference.prediction import Prediction
from inference.preprocess import PreparedImage, from_dataset
from inference.registry import ModelRegistry

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0  # a worker with nothing to do re-checks the queue this often (it is also woken)


class LeaseLost(RuntimeError):
    """The job's lease expired while this worker ran it and another worker took it: the result is not
    recorded (the other worker's run, with the same deterministic UIDs, is)."""


@dataclass
class JobResult:
    prediction: Prediction
    outputs: dict[OutputKind, Dataset]
    timings_ms: dict[str, float]  # stage -> milliseconds (kept in the job's audit metrics)
    weights_sha256: str = ""  # the full weights identity (the prediction's model version is its prefix)
    flip_agreement: bool = True  # whether the mirror-image pass ran


class Processor:
    """Runs one job end to end (used by the worker threads, ``spinenode segment`` and the benchmark)."""

    def __init__(
        self,
        db: AuditDB,
        storage: Storage,
        models: ModelRegistry,
        flip_agreement: bool = True,
        decoded: DecodedCache | None = None,
        default_character_set: str = DEFAULT_CHARACTER_SET,
        vertebra_segments: bool = True,
    ) -> None:
        self.db = db
        self.storage = storage
        self.models = models
        self.flip_agreement = flip_agreement
        self.default_character_set = default_character_set
        self.vertebra_segments = vertebra_segments  # a SEG segment per vertebra, for models with levels
        self.decoded = decoded  # images the receiver of this process decoded already

    def segment(
        self, ds: Dataset, model: str, prepared: PreparedImage | None = None, flip_agreement: bool | None = None
    ) -> JobResult:
        """Segment ``ds`` with ``model`` and build its outputs; ``flip_agreement`` overrides the node's setting
        (a route's choice)."""
        engine = self.models.get(model)
        flip = self.flip_agreement if flip_agreement is None else flip_agreement
        started = datetime.now()
        t0 = time.perf_counter()
        if prepared is None:
            prepared = from_dataset(ds)
        t1 = time.perf_counter()
        prediction = engine.predict(prepared, pixel_spacing_mm(ds), flip_agreement=flip)
        t2 = time.perf_counter()
        built = build_outputs(
            ds,
            prediction,
            engine.card,
            display_image=prepared.image,
            default_character_set=self.default_character_set,
            started=started,
            vertebra_segments=self.vertebra_segments,
        )
        t3 = time.perf_counter()
        # no SEG when the prediction is not reliable: only SR and SC are written and delivered
        outputs = {OutputKind(kind): ds for kind, ds in built.by_kind().items()}
        timings = {"decode_preprocess": t1 - t0, "predict": t2 - t1, "build_outputs": t3 - t2}
        timings_ms = {k: round(v * 1000, 1) for k, v in timings.items()} | built.timings_ms
        timings_ms["forward"] = round(prediction.forward_ms, 1)  # of "predict": the models alone
        return JobResult(prediction, outputs, timings_ms, engine.card.weights_sha256, flip)

    def run(self, job_id: int, holder: JobQueue | None = None, attempt: int | None = None) -> None:
        """Run one job. With ``holder`` (the queue that claimed it) and ``attempt`` (the claim's attempt
        number, from ``JobQueue.claim``), the result is committed only while the job is still
        that claim (``LeaseLost`` otherwise)."""
        start = time.perf_counter()
        with self.db.session() as s:
            job = s.get(JobRecord, job_id)
            assert job is not None
            path, model, destinations = job.instance.path, job.model, list(job.destinations)
            flip_agreement = job.flip_agreement
            study_uid, source_uid = job.instance.study_instance_uid, job.instance.sop_instance_uid
        t_read = time.perf_counter()
        cached = self.decoded.pop(job_id) if self.decoded is not None else None
        ds, prepared = cached if cached is not None else (dcmread(path), None)
        read_ms = (time.perf_counter() - t_read) * 1000
        result = self.segment(ds, model, prepared, flip_agreement)
        result.timings_ms["read"] = round(read_ms, 1)  # 0 when the receiver handed the decoded image over
        t_write = time.perf_counter()
        files = {}
        for kind, out in result.outputs.items():
            out_path = self.storage.output_path(study_uid, str(out.SOPInstanceUID))
            write_durably(out_path, dataset_bytes(out))
            files[kind] = out_path
        result.timings_ms["encode_write"] = round((time.perf_counter() - t_write) * 1000, 1)
        total_ms = (time.perf_counter() - start) * 1000
        with self.db.session() as s:
            job = s.get(JobRecord, job_id, with_for_update=True)  # the row lock fences a reclaim
            assert job is not None
            if holder is not None and not holder.holds(job, attempt):
                now = f"{job.state.value}, attempt {job.attempts}"
                raise LeaseLost(f"job {job_id} is no longer this worker's (now {now}); result not recorded")
            mine = OutputRecord.kind.in_(list(result.outputs))  # not the evaluation SRs of the job
            existing = {o.kind: o for o in s.scalars(select(OutputRecord).where(OutputRecord.job_id == job_id, mine))}
            for kind, out in result.outputs.items():
                rec = existing.get(kind)
                if rec is None:
                    rec = OutputRecord(job_id=job_id, kind=kind)
                    s.add(rec)
                rec.sop_class_uid = str(out.SOPClassUID)
                rec.sop_instance_uid = str(out.SOPInstanceUID)
                rec.series_instance_uid = str(out.SeriesInstanceUID)
                rec.path = str(files[kind])
                s.flush()
                have = {d.destination for d in rec.deliveries}
                for dest in destinations:
                    if dest not in have:
                        s.add(DeliveryRecord(output_id=rec.id, destination=dest, state=DeliveryState.PENDING))
            job.model_version = result.prediction.model_version
            job.inference_ms = round(result.prediction.inference_ms, 1)
            job.total_ms = round(total_ms, 1)
            job.metrics = {
                **result.prediction.to_json(),
                "weights_sha256": result.weights_sha256,
                "timings_ms": result.timings_ms,
                "flip_agreement": result.flip_agreement,  # whether the mirror-image pass ran
            }
            job.error = None
            set_state(s, job, JobState.DONE, worker=str(holder.identity) if holder is not None else None)
            due = mark_due(s, source_uid)
        log.info(
            "job %d done: %s in %.0f ms (inference %.0f ms)", job_id, model, total_ms, result.prediction.inference_ms
        )
        if due:
            log.info("job %d: %d reference segmentation(s) of its image to compare", job_id, due)


class WorkerPool:
    """``n`` threads taking jobs from the queue - and, when none is queued, due reference comparisons -
    until stopped."""

    def __init__(
        self,
        queue: JobQueue,
        processor: Processor,
        n: int,
        on_done: Callable[[], None],
        evaluator: Evaluator | None = None,
    ) -> None:
        self.queue = queue
        self.processor = processor
        self.n = n
        self.on_done = on_done
        self.evaluator = evaluator
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.busy = 0

    def start(self) -> None:
        for i in range(self.n):
            t = threading.Thread(target=self._loop, name=f"worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 60.0) -> None:
        """Finish the jobs in hand, take no more."""
        self._stop.set()
        self.queue.notify()
        for t in self._threads:
            t.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            claimed = self.queue.claim()
            if claimed is None:
                if not self._evaluate_one():
                    self.queue.wait(IDLE_POLL_S)
                continue
            job_id, attempt = claimed
            self.busy += 1
            try:
                self.processor.run(job_id, holder=self.queue, attempt=attempt)
            except LeaseLost as exc:  # another worker re-runs it: nothing of this run is recorded
                log.warning("job %d: %s", job_id, exc)
                self.processor.db.record_event("lease_lost", str(exc), job_id=job_id)
            except Exception as exc:  # any failure of one job is recorded; the worker carries on
                reason = f"{type(exc).__name__}: {exc}"
                log.exception("job %d failed", job_id)
                if self.queue.finish(job_id, attempt, JobState.FAILED, reason, error=reason):
                    self.processor.db.record_event("job_failed", reason, job_id=job_id)
            finally:
                self.busy -= 1
            self.on_done()

    def _evaluate_one(self) -> bool:
        """Compare one due reference SEG, if any. Returns whether there was one."""
        claim = self.evaluator.claim() if self.evaluator is not None else None
        if claim is None or self.evaluator is None:
            return False
        self.busy += 1
        try:
            self.evaluator.run(claim)
        except Exception as exc:  # one reference's failure is recorded; the worker carries on
            log.exception("comparison of reference %d failed", claim.ref_id)
            self.evaluator.fail(claim, f"{type(exc).__name__}: {exc}")
        finally:
            self.busy -= 1
        self.on_done()
        return True


__all__ = ["JobResult", "LeaseLost", "Processor", "WorkerPool"]

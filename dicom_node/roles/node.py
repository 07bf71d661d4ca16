"""The composition root: builds the node's parts from one typed config and wires them together.

Read top to bottom: database and storage, the job queue, models, the processor, the evaluator of
reference segmentations, the workers that run both, the sender, and the receiver that feeds the queue.
``start`` recovers unfinished work first; ``stop`` stops
intake, lets workers finish the jobs in hand (others stay queued for the next start) and stops sending.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from sqlalchemy import func, select

from dicom_node.audit.records import (
    AuditDB,
    DeliveryRecord,
    DeliveryState,
    JobRecord,
    JobState,
    ReceivedSegRecord,
    ReferenceState,
)
from dicom_node.config import NodeConfig
from dicom_node.delivery.sender import Sender
from dicom_node.dimse.decoded import DECODED_CACHE_ITEMS, DecodedCache
from dicom_node.dimse.scp import Receiver
from dicom_node.queue.jobs import JobQueue
from dicom_node.queue.leases import LeaseKeeper, WorkerIdentity
from dicom_node.queue.processing import Processor, WorkerPool
from dicom_node.reference.evaluation import Evaluator
from dicom_node.retention.prune import Pruner
from dicom_node.roles.processes import WorkerProcesses, threads_each
from dicom_node.storage import Storage
from inference.model_card import find_card
from inference.registry import ModelRegistry
from inference.settings import InferenceSettings

log = logging.getLogger(__name__)


def model_names(config: NodeConfig, models: ModelRegistry) -> list[str]:
    """The models the node's jobs use (the default and every route's), each checked to exist: an unknown
    model stops the start (KeyError)."""
    names = list(dict.fromkeys([config.model, *(route.model for route in config.routes)]))
    for name in names:
        find_card(name, models.root)
    return names


def warm_up(models: ModelRegistry, names: list[str]) -> None:
    """Load and warm up ``names`` (the first job pays no set-up), then the output writers."""
    for name in names:
        try:
            engine = models.get(name)
            engine.probabilities(np.zeros((2, 3, *engine.card.input_size), np.float32))  # the node's batch
        except Exception:  # recorded by the registry (health: degraded); jobs for it fail with the reason
            log.exception("model %s could not be loaded", name)
    try:  # the writers' first call costs seconds (highdicom's lazy set-up): pay it here, not on a patient
        from dicom_node.writers.outputs import build_outputs
        from inference.data.phantom import make_phantom
        from inference.data.phantom_dicom import phantom_to_dataset
        from inference.preprocess import from_dataset

        ds = phantom_to_dataset(make_phantom(0, height=256))
        engine = models.get(names[0])
        prepared = from_dataset(ds)
        build_outputs(ds, engine.predict(prepared, (0.2, 0.2)), engine.card, display_image=prepared.image)
    except Exception:  # a warm-up only: the first job pays the set-up instead
        log.warning("warming up the writers failed", exc_info=True)


def _wake_both(queue: JobQueue, processes: WorkerProcesses) -> Callable[[], None]:
    """A job is queued (or a comparison due): wake this process's workers and the worker processes."""

    def wake() -> None:
        queue.notify()
        processes.notify()

    return wake


@dataclass
class Node:
    config: NodeConfig
    db: AuditDB
    storage: Storage
    queue: JobQueue
    models: ModelRegistry
    processor: Processor
    evaluator: Evaluator
    workers: WorkerPool
    sender: Sender
    receiver: Receiver
    port: int = 0
    warmup: threading.Thread | None = None  # loads and warms the models while associations are accepted
    leases: LeaseKeeper | None = None  # renews this process's job/delivery leases, reclaims expired ones
    pruner: Pruner | None = None  # retention: deletes delivered data once old enough ([retention])
    processes: WorkerProcesses | None = None  # worker processes beside this one (``worker_processes``)

    @classmethod
    def compose(cls, config: NodeConfig, models: ModelRegistry | None = None) -> Node:
        """The node's parts. With ``config.worker_processes``, the jobs are run by that many worker
        processes (each ``config.workers`` threads, the cores shared out among their models) and by no
        thread of this process."""
        processes = None
        models = models or ModelRegistry()
        if config.worker_processes:
            n = config.worker_processes
            settings = InferenceSettings(models.root, models.runtime, models.cache_dir, threads_each(n))
            child = replace(config, worker_processes=0, workers=max(1, config.workers))
            processes = WorkerProcesses(child, settings, n, verbose=log.isEnabledFor(logging.DEBUG))
            config = replace(config, workers=0)
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = AuditDB(config.database_url)  # a SQLite file by default, or a server URL
        storage = Storage(config.data_dir)
        identity = WorkerIdentity.current()
        queue = JobQueue(db, identity, config.lease_s)
        # the receiver's decoded images for this process's workers (none kept without workers)
        decoded = DecodedCache(DECODED_CACHE_ITEMS if config.workers else 0)
        processor = Processor(
            db,
            storage,
            models,
            flip_agreement=config.flip_agreement,
            decoded=decoded,
            default_character_set=config.default_character_set,
            vertebra_segments=config.vertebra_segments,
        )
        evaluator = Evaluator(db, storage, models.root, identity, config.lease_s)
        sender = Sender(config, db, identity)
        workers = WorkerPool(queue, processor, config.workers, on_done=sender.notify, evaluator=evaluator)
        wake = queue.notify if processes is None else _wake_both(queue, processes)
        receiver = Receiver(config, db, storage, on_job=lambda _job: wake(), on_reference=wake, decoded=decoded)
        leases = LeaseKeeper(db, identity, config.lease_s, on_reclaim=queue.notify)
        pruner = Pruner(db, storage, config.retention, config.min_free_disk_mb)
        return cls(
            config,
            db,
            storage,
            queue,
            models,
            processor,
            evaluator,
            workers,
            sender,
            receiver,
            leases=leases,
            pruner=pruner,
            processes=processes,
        )

    def start(self, preload: bool = True) -> int:
        recovered = self.queue.recover()
        if recovered:
            log.info("re-queued %d unfinished job(s) from an earlier run", recovered)
        if preload and self.config.workers:
            names = model_names(self.config, self.models)  # an unknown model stops the start (KeyError) ...
            # ... loading and warming up take seconds: done in the background while associations are
            # accepted and stored; a worker's job waits for its model (the registry loads each once)
            self.warmup = threading.Thread(target=warm_up, args=(self.models, names), name="model-warmup", daemon=True)
            self.warmup.start()
        self.db.record_event("start", f"AE {self.config.ae_title}, model {self.config.model}")
        self.workers.start()
        self.sender.start()
        if self.leases is not None:
            self.leases.start()
        if self.pruner is not None:
            self.pruner.start()
        if self.processes is not None:
            model_names(self.config, self.models)  # an unknown model stops the start here, not in each process
            self.processes.start()
        self.port = self.receiver.start()
        return self.port

    def stop(self) -> None:
        log.info("stopping: no new instances, finishing jobs in hand")
        self.receiver.stop()
        if self.processes is not None:
            self.processes.stop()  # each finishes the job in hand
        if self.pruner is not None:
            self.pruner.stop()
        self.workers.stop()
        self.sender.stop()
        if self.leases is not None:  # after the workers: their leases are renewed while they finish
            self.leases.stop()
        self.db.record_event("stop")
        self.db.dispose()

    def health(self) -> dict[str, object]:
        with self.db.session() as s:

            def count(model: type, *where: Any) -> int:
                return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)

            queue = {
                "pending": count(JobRecord, JobRecord.state.in_((JobState.RECEIVED, JobState.QUEUED))),
                "running": count(JobRecord, JobRecord.state == JobState.RUNNING),
                "failed": count(JobRecord, JobRecord.state == JobState.FAILED),
            }
            deliveries = {
                "pending": count(DeliveryRecord, DeliveryRecord.state == DeliveryState.PENDING),
                "committing": count(DeliveryRecord, DeliveryRecord.state == DeliveryState.COMMITTING),
                "failed": count(DeliveryRecord, DeliveryRecord.state == DeliveryState.FAILED),
            }
            reference_segs = {
                state.value: count(ReceivedSegRecord, ReceivedSegRecord.state == state)
                for state in (ReferenceState.WAITING, ReferenceState.DUE, ReferenceState.EVALUATING)
            }
        models = self.models.status()
        disk = self.pruner.status() if self.pruner is not None else None
        processes = self.processes.status() if self.processes is not None else None
        degraded = any(m["error"] for m in models) or deliveries["failed"] > 0 or bool(disk and disk["low"])
        degraded = degraded or any(not p["running"] for p in processes or [])  # a worker process is down
        return {
            "status": "degraded" if degraded else "healthy",
            "dicom": {"ae_title": self.config.ae_title, "port": self.port, "accepting": self.receiver.accepting},
            "models": models,
            "queue": queue,
            "deliveries": deliveries,
            "references": reference_segs,
            "disk": disk,
            "device": "cpu",
            "worker_processes": processes,
        }

"""The worker role: ``spinenode worker`` - a process that only runs jobs and sends results.

Scale-out layout: one or more receivers (``spinenode serve --workers 0``) store instances and queue jobs in
PostgreSQL; any number of worker processes, on any host that sees the same storage root and database,
claim jobs (``SELECT ... FOR UPDATE SKIP LOCKED``), run them and deliver the results. Each worker is known
by its host and pid (``WorkerIdentity``), recorded on every job it claims and every transition it makes;
its ``LeaseKeeper`` thread renews its leases and reclaims those of dead workers (``dicom_node.queue.leases``).

A worker has no DICOM listener: it is woken by polling the queue (``IDLE_POLL_S``) and stops on SIGINT or
SIGTERM after the job in hand.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from dicom_node.audit.database import redacted
from dicom_node.audit.records import AuditDB
from dicom_node.config import NodeConfig
from dicom_node.delivery.sender import Sender
from dicom_node.queue.jobs import JobQueue
from dicom_node.queue.leases import LeaseKeeper, WorkerIdentity
from dicom_node.queue.processing import Processor, WorkerPool
from dicom_node.reference.evaluation import Evaluator
from dicom_node.retention.prune import Pruner
from dicom_node.roles.node import model_names, warm_up
from dicom_node.storage import Storage
from inference.registry import ModelRegistry

log = logging.getLogger(__name__)


@dataclass
class WorkerNode:
    config: NodeConfig
    identity: WorkerIdentity
    db: AuditDB
    storage: Storage
    queue: JobQueue
    models: ModelRegistry
    processor: Processor
    evaluator: Evaluator
    workers: WorkerPool
    sender: Sender
    leases: LeaseKeeper
    pruner: Pruner
    warmup: threading.Thread | None = None

    @classmethod
    def compose(cls, config: NodeConfig, models: ModelRegistry | None = None) -> WorkerNode:
        if config.workers < 1:
            raise ValueError("a worker needs at least one thread (--workers 1 or more)")
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        identity = WorkerIdentity.current()
        db = AuditDB(config.database_url)
        storage = Storage(config.data_dir)
        queue = JobQueue(db, identity, config.lease_s)
        models = models or ModelRegistry()
        processor = Processor(
            db,
            storage,
            models,
            flip_agreement=config.flip_agreement,
            default_character_set=config.default_character_set,
            vertebra_segments=config.vertebra_segments,
        )
        evaluator = Evaluator(db, storage, models.root, identity, config.lease_s)
        sender = Sender(config, db, identity)
        workers = WorkerPool(queue, processor, config.workers, on_done=sender.notify, evaluator=evaluator)
        leases = LeaseKeeper(db, identity, config.lease_s, on_reclaim=queue.notify)
        pruner = Pruner(db, storage, config.retention, config.min_free_disk_mb)  # one at a time across hosts
        return cls(config, identity, db, storage, queue, models, processor, evaluator, workers, sender, leases, pruner)

    @property
    def description(self) -> str:
        return (
            f"SpineNode worker {self.identity} on {redacted(self.config.database_url)}: "
            f"{self.config.workers} thread(s), lease {self.config.lease_s:g} s"
        )

    def start(self, preload: bool = True) -> None:
        if self.db.is_sqlite:
            log.warning("worker on a SQLite file: only processes of this host share it; PostgreSQL scales out")
        recovered = self.queue.recover()
        if recovered:
            log.info("re-queued %d job(s) left by a dead worker", recovered)
        if preload:
            names = model_names(self.config, self.models)  # an unknown model stops the start (KeyError)
            # no job is claimed before the models are loaded and warm: a worker that is not ready leaves
            # the queue to the others (and loading, GIL-heavy, would delay the lease heartbeats)
            self.warmup = threading.Thread(target=self._warm_up_then_work, args=(names,), name="model-warmup")
            self.warmup.daemon = True
        self.db.record_event("worker_start", self.description)
        self.leases.start()
        self.pruner.start()
        self.sender.start()
        if self.warmup is not None:
            self.warmup.start()
        else:
            self.workers.start()

    def _warm_up_then_work(self, names: list[str]) -> None:
        warm_up(self.models, names)
        log.info("worker %s ready: models %s loaded", self.identity, ", ".join(names))
        self.db.record_event("worker_ready", str(self.identity))
        self.workers.start()

    def stop(self) -> None:
        log.info("worker %s stopping: finishing the job in hand", self.identity)
        if self.warmup is not None:
            self.warmup.join(120)  # then its workers exist and stop; they are stopped before they take a job
        self.pruner.stop()
        self.workers.stop()
        self.sender.stop()
        self.leases.stop()
        self.db.record_event("worker_stop", str(self.identity))
        self.db.dispose()


__all__ = ["WorkerNode"]

"""Retention for real: a node's data directory filled through dcmtk, pruned by age, audited.

One in-process node (tiny real model, SQLite) receives phantoms with ``storescu``: three routed to a live
dcmtk ``storescp`` (delivered), one to a destination that is down (pending), and a reader's SEG whose
source never came (awaited). Pruned 31 days later: the delivered images and their outputs are deleted,
nothing undelivered or awaited is touched, every deletion is an event with its bytes and reason, the
audit and ``/api/jobs`` still show the jobs with their files marked pruned (and no links to them), and
``/api/health`` and ``/metrics`` report the disk and what may be pruned.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from sqlalchemy import select

from dicom_node.audit.records import (
    DeliveryState,
    InstanceRecord,
    OutputRecord,
    ReceivedSegRecord,
    ReferenceState,
    utcnow,
)
from dicom_node.audit.report import audit_report
from dicom_node.config import Destination, NodeConfig, Route
from dicom_node.http.server import HttpServer
from dicom_node.retention.policy import RetentionPolicy
from dicom_node.retention.prune import parse_duration, prunable, prune
from dicom_node.roles.node import Node
from inference.data.phantom import make_phantom
from inference.data.phantom_dicom import phantom_to_dataset
from inference.registry import ModelRegistry
from tests.conftest import PROJECT, TINY_MODEL, StoreSCP, free_port, storescu, wait_until

pytestmark = pytest.mark.slow  # a node with dcmtk peers

LATE_AE = "LATEMOD"  # routed to a destination that is down
DELIVERED_SEEDS = (940000, 940001, 940002)
PENDING_SEED = 940003


@dataclass
class Filled:
    node: Node
    client: httpx.Client
    delivered: list[str]  # source SOP Instance UIDs
    pending: str
    reference: str  # SOP Instance UID of the awaited reference SEG


def _phantom(folder: Path, seed: int, height: int = 384) -> Path:
    path = folder / f"p{seed}.dcm"
    phantom_to_dataset(make_phantom(seed, height=height)).save_as(path, enforce_file_format=True)
    return path


def _job(node: Node, uid: str) -> dict:  # type: ignore[type-arg]
    return next(j for j in audit_report(node.db, limit=100)["jobs"] if j["sop_instance_uid"] == uid)


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory, dest: StoreSCP, models_root: Path) -> Iterator[Filled]:
    from tests.dicom_node.outputs import PHANTOM_HEIGHT, reference_seg
    from tests.dicom_node.reference.test_reference_eval import REQUIRED_CONTEXTS

    folder = tmp_path_factory.mktemp("retention-in")
    down = Destination("DOWN", "127.0.0.1", free_port())  # nobody listens
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPINENODE_MODELS_DIR", str(models_root))
        config = NodeConfig(
            data_dir=tmp_path_factory.mktemp("retention-var"),
            port=free_port(),
            bind="127.0.0.1",
            model=TINY_MODEL,
            destinations=(Destination.parse(dest.destination),),
            routes=(Route(TINY_MODEL, (down,), calling_ae=LATE_AE),),
            retention_enabled=False,  # the test prunes, at a time of its choosing
            retry_max_attempts=1000,
        )
        node = Node.compose(config, ModelRegistry(models_root))
        node.start()
        http = HttpServer(node, "127.0.0.1", free_port())
        http.start()
        client = httpx.Client(base_url=http.url, timeout=60)
        try:
            delivered = []
            for seed in DELIVERED_SEEDS:
                path = _phantom(folder, seed)
                assert storescu(node.port, path).returncode == 0
                delivered.append(str(dcmread(path).SOPInstanceUID))
            late = _phantom(folder, PENDING_SEED)
            assert storescu(node.port, late, calling=LATE_AE).returncode == 0
            orphan = _phantom(folder, 940009, PHANTOM_HEIGHT)  # a reference arrives; its source image never does
            ref_path = reference_seg(orphan, 940009, folder)
            assert storescu(node.port, ref_path, extra=REQUIRED_CONTEXTS).returncode == 0

            def settled() -> bool:
                jobs = {j["sop_instance_uid"]: j for j in audit_report(node.db, limit=100)["jobs"]}
                states = [
                    d["state"]
                    for u in delivered
                    for o in jobs.get(u, {"outputs": []})["outputs"]
                    for d in o["deliveries"]
                ]
                late_job = jobs.get(str(dcmread(late).SOPInstanceUID))
                return len(states) == 9 and set(states) == {"delivered"} and bool(late_job and late_job["outputs"])

            wait_until(settled, what="three images delivered, one pending")
            yield Filled(
                node, client, delivered, str(dcmread(late).SOPInstanceUID), str(dcmread(ref_path).SOPInstanceUID)
            )
        finally:
            client.close()
            http.stop()
            node.stop()


def _files(node: Node, uid: str) -> list[Path]:
    """The received image's file and its job's output files."""
    job_id = _job(node, uid)["id"]
    with node.db.session() as s:
        inst = s.scalar(select(InstanceRecord).where(InstanceRecord.sop_instance_uid == uid))
        outs = s.scalars(select(OutputRecord.path).where(OutputRecord.job_id == job_id)).all()
        assert inst is not None
        return [Path(inst.path), *map(Path, outs)]


def _references(node: Node) -> list[tuple[ReferenceState, Path]]:
    with node.db.session() as s:
        return [(r.state, Path(r.instance.path)) for r in s.scalars(select(ReceivedSegRecord))]


def test_pruning_by_age_deletes_only_what_is_delivered_and_tells_the_whole_story(filled: Filled) -> None:
    node = filled.node
    policy = RetentionPolicy(instances_days=30, outputs_days=30, enabled=False)
    assert prunable(node.db, policy) == []  # nothing is old enough today
    later = utcnow() + timedelta(days=31)
    delivered_files = [p for uid in filled.delivered for p in _files(node, uid)]
    kept_files = _files(node, filled.pending)
    assert len(delivered_files) == 12 and all(p.is_file() for p in delivered_files + kept_files)

    plan = prune(node.db, node.storage, policy, now=later, dry_run=True)
    assert plan.dry_run and len(plan.files) == 12 and all(p.is_file() for p in delivered_files)  # nothing deleted
    assert {f.kind for f in plan.files} == {"instance", "seg", "sr", "sc"}
    assert plan.bytes == sum(p.stat().st_size for p in delivered_files)

    done = prune(node.db, node.storage, policy, now=later)
    assert len(done.files) == 12 and done.bytes == plan.bytes
    assert not any(p.exists() for p in delivered_files)
    assert all(p.is_file() for p in kept_files)  # its deliveries are pending: untouched
    [(state, reference_file)] = _references(node)
    assert state == ReferenceState.WAITING and reference_file.is_file()  # still awaited: kept
    assert prune(node.db, node.storage, policy, now=later).files == []  # idempotent

    events = [e for e in node.db.events() if e.kind == "pruned"]
    assert len(events) == 12 and {e.sop_instance_uid for e in events if "instance file" in (e.detail or "")} == set(
        filled.delivered
    )
    assert all("bytes" in (e.detail or "") and "delivered" in (e.detail or "") for e in events)
    for uid in filled.delivered:
        job = _job(node, uid)
        assert job["state"] == "done" and job["instance_pruned_at"]
        assert all(o["pruned_at"] for o in job["outputs"])
        assert all(d["state"] == DeliveryState.DELIVERED.value for o in job["outputs"] for d in o["deliveries"])
    pending = _job(node, filled.pending)
    assert pending["instance_pruned_at"] is None and not any(o["pruned_at"] for o in pending["outputs"])

    jobs = {j["sop_instance_uid"]: j for j in filled.client.get("/api/jobs").json()["jobs"]}
    pruned_job = jobs[filled.delivered[0]]
    assert set(pruned_job["urls"]) == {"self"}  # no link to a deleted file
    assert filled.client.get(f"/api/jobs/{pruned_job['id']}/outputs/seg").status_code == 404
    assert {"seg", "sr", "sc"} <= set(jobs[filled.pending]["urls"])

    health = filled.client.get("/api/health").json()
    assert health["disk"]["free_mb"] > 0 and health["disk"]["retention"]["instances_days"] == 30
    metrics = filled.client.get("/metrics").text
    assert "spinenode_files_pruned_total 12" in metrics and "spinenode_disk_free_bytes" in metrics


def test_prune_command_line(filled: Filled) -> None:
    cmd = [sys.executable, "-m", "dicom_node.cli", "prune", "--data-dir", str(filled.node.config.data_dir)]
    env = {**os.environ, "SPINENODE_CONFIG": ""}
    proc = subprocess.run(
        [*cmd, "--older-than", "0d", "--dry-run", "--json"], cwd=PROJECT, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["dry_run"] and all(f["sop_instance_uid"] != filled.pending for f in report["pruned"])
    bad = subprocess.run([*cmd, "--older-than", "soon"], cwd=PROJECT, capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "not a duration" in bad.stderr and "Traceback" not in bad.stderr


def test_durations() -> None:
    assert parse_duration("30d") == 30 and parse_duration("12h") == 0.5 and parse_duration("2w") == 14
    assert parse_duration("90") == 90 and parse_duration("1440m") == 1
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("a while")


def test_one_pruner_at_a_time_on_a_shared_sqlite_file(tmp_path: Path) -> None:
    """The processes of ``serve --workers auto`` share one SQLite file: a pass finds the lock beside it
    held (here by another open file description, as another process would) and prunes nothing."""
    import fcntl

    from dicom_node.audit.records import AuditDB
    from dicom_node.storage import Storage

    db = AuditDB(tmp_path / "spinenode.db")
    try:
        policy = RetentionPolicy(instances_days=30, outputs_days=30)
        with open(tmp_path / "spinenode.db.prune-lock", "a") as other:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            assert prune(db, Storage(tmp_path), policy).skipped == "another pruner is running"
            fcntl.flock(other, fcntl.LOCK_UN)
        assert prune(db, Storage(tmp_path), policy).skipped is None  # free again
    finally:
        db.dispose()

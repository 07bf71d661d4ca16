"""``spinenode audit``: recent jobs with their outputs and delivery state, as JSON or a table."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import selectinload

from dicom_node.audit.records import AuditDB, DeliveryRecord, EventRecord, JobRecord, OutputRecord

_Q = TypeVar("_Q", bound=Select[Any])


def iso(value: datetime | None) -> str | None:
    """A stored (naive UTC) time as ISO 8601 with milliseconds and ``Z``; None stays None."""
    return value.isoformat(timespec="milliseconds") + "Z" if value else None


def with_outputs(query: _Q, attempt_log: bool = False) -> _Q:
    """``query`` of jobs, loading what ``job_view`` reads (and each delivery's attempts when asked)."""
    deliveries = selectinload(JobRecord.outputs).selectinload(OutputRecord.deliveries)
    if attempt_log:
        deliveries = deliveries.selectinload(DeliveryRecord.attempt_log)
    return query.options(selectinload(JobRecord.instance), selectinload(JobRecord.transitions), deliveries)


def job_view(job: JobRecord) -> dict[str, Any]:
    return {
        "id": job.id,
        "state": job.state.value,
        "sop_instance_uid": job.instance.sop_instance_uid,
        "study_instance_uid": job.instance.study_instance_uid,
        "sop_class_uid": job.instance.sop_class_uid,
        "model": job.model,
        "model_version": job.model_version,
        "attempts": job.attempts,
        # the worker process that holds the job (running) or ran it: host + pid
        "worker": {"host": job.worker_host, "pid": job.worker_pid} if job.worker_host else None,
        "lease_expires_at": iso(job.lease_expires_at),
        "inference_ms": job.inference_ms,
        "total_ms": job.total_ms,
        "error": job.error,
        "received_at": iso(job.created_at),
        "instance_pruned_at": iso(job.instance.pruned_at),  # the received image was deleted (retention)
        "finished_at": iso(job.finished_at),
        "transitions": [
            {"state": t.state.value, "at": iso(t.at), "detail": t.detail, "worker": t.worker} for t in job.transitions
        ],
        "metrics": job.metrics,
        "outputs": [
            {
                "kind": o.kind.value,
                "sop_class_uid": o.sop_class_uid,
                "sop_instance_uid": o.sop_instance_uid,
                "pruned_at": iso(o.pruned_at),  # the file was deleted (retention); the record stays
                "deliveries": [
                    {
                        "destination": d.destination,
                        "state": d.state.value,
                        "attempts": d.attempts,
                        "last_status": d.last_status,
                        "last_error": d.last_error,
                        "delivered_at": iso(d.delivered_at),
                    }
                    for d in o.deliveries
                ],
            }
            for o in job.outputs
        ],
    }


def recent_jobs(db: AuditDB, limit: int = 50, since: datetime | None = None) -> list[dict[str, Any]]:
    """The latest ``limit`` jobs (received at or after ``since``), newest first, as ``job_view``s."""
    q = with_outputs(select(JobRecord)).order_by(JobRecord.id.desc()).limit(limit)
    if since is not None:
        q = q.where(JobRecord.created_at >= since)
    with db.session() as s:
        return [job_view(j) for j in s.scalars(q)]


# events format_audit lists under "recent refusals/failures" (a reference SEG not compared, with its reason)
FAILURE_EVENTS = frozenset({"refused", "job_failed", "reference_failed", "reference_unusable"})


def audit_report(db: AuditDB, since: str | None = None, limit: int = 50) -> dict[str, Any]:
    when = datetime.fromisoformat(since.rstrip("Z")) if since else None
    jobs = recent_jobs(db, limit, when)
    eq = select(EventRecord).order_by(EventRecord.id.desc()).limit(limit)
    if when is not None:
        eq = eq.where(EventRecord.at >= when)
    with db.session() as s:
        events = [
            {
                "at": iso(e.at),
                "kind": e.kind,
                "sop_instance_uid": e.sop_instance_uid,
                "status": e.status,
                "detail": e.detail,
            }
            for e in s.scalars(eq)
        ]
    return {"jobs": jobs, "events": events}


def format_audit(report: dict[str, Any]) -> str:
    lines = [f"{'job':>5} {'state':8} {'model':24} {'ms':>7}  outputs (delivered/total)  instance"]
    for j in report["jobs"]:
        deliveries = [d for o in j["outputs"] for d in o["deliveries"]]
        done = sum(d["state"] == "delivered" for d in deliveries)
        kinds = "+".join(o["kind"].upper() for o in j["outputs"]) or "-"
        ms = f"{j['total_ms']:.0f}" if j["total_ms"] else "-"
        lines.append(
            f"{j['id']:>5} {j['state']:8} {j['model']:24} {ms:>7}  {kinds:11} {done}/{len(deliveries):<12} "
            f"{j['sop_instance_uid']}"
            + (f"  worker {j['worker']['host']}:{j['worker']['pid']}" if j["worker"] else "")
            + (f"  error: {j['error']}" if j["error"] else "")
        )
    refused = [e for e in report["events"] if e["kind"] in FAILURE_EVENTS]
    if refused:
        lines.append("")
        lines.append("recent refusals/failures:")
        for e in refused[:20]:
            status = f"0x{e['status']:04X}" if e["status"] is not None else ""
            lines.append(f"  {e['at']} {e['kind']} {status} {e['sop_instance_uid'] or ''} {e['detail'] or ''}")
    return "\n".join(lines)

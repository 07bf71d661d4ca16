"""The node's commands: serve, worker, echo, send, audit, metrics, retry, prune."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dicom_node.cli.common import CLIError, registry_of
from dicom_node.cli.signals import SignalPipe


def _node_config(args: argparse.Namespace) -> Any:
    from dicom_node.config import ConfigError, Destination, load_config, parse_destination

    tls_destinations = getattr(args, "tls_destination", None) or []
    tls_paths = {k: Path(v) for k in ("tls_cert", "tls_key", "tls_ca") if (v := getattr(args, k, None))}
    try:
        return load_config(
            Path(args.config) if args.config else None,
            ae_title=args.ae_title,
            port=args.port,
            bind=getattr(args, "bind", None),
            data_dir=Path(args.data_dir) if args.data_dir else None,
            destinations=tuple(
                parse_destination(d) for d in [*(getattr(args, "destination", None) or []), *tls_destinations]
            ),
            model=getattr(args, "model", None),
            allowed_calling_aes=tuple(getattr(args, "allow_calling_ae", None) or []),
            workers=getattr(args, "workers", None),
            db_url=getattr(args, "db_url", None),
            lease_s=getattr(args, "lease_s", None),
            tls_require_client_cert=getattr(args, "tls_require_client_cert", None),
            tls_destinations=tuple(str(Destination.parse(d)) for d in tls_destinations),
            http_host=getattr(args, "http_host", None),
            http_port=getattr(args, "http_port", None),
            **tls_paths,
        )
    except ConfigError as exc:
        raise CLIError(str(exc)) from exc


def cmd_serve(args: argparse.Namespace) -> int:
    from dicom_node.roles.node import Node

    config = _node_config(args)
    node = Node.compose(config, registry_of(args))
    http = _bind_http(node, config)  # None unless --http-port / [http] port; bound before the node starts
    with SignalPipe() as signals:  # a SIGTERM from here on stops the node once it has started
        return _serve(node, config, http, signals)


def _serve(node: Any, config: Any, http: Any, signals: SignalPipe) -> int:
    try:
        port = node.start()
    except KeyError as exc:
        node.db.dispose()
        raise CLIError(str(exc.args[0] if exc.args else exc)) from exc
    except OSError as exc:
        node.db.dispose()
        raise CLIError(f"cannot listen on {config.bind}:{config.port}: {exc.strerror or exc}") from exc
    dests = ", ".join(str(d) for d in config.destinations) or "none (results kept in the data directory)"
    print(
        f"SpineNode {config.ae_title} listening on port {port}; model {config.model}; destinations: {dests}", flush=True
    )
    if http is not None:
        try:
            http.start()
        except RuntimeError as exc:
            node.stop()
            raise CLIError(str(exc)) from exc
        print(f"SpineNode web page and REST API at {http.url}", flush=True)
    signals.wait_for_stop()
    if http is not None:
        http.stop()
    node.stop()
    return 0


def _bind_http(node: Any, config: Any) -> Any:
    if not config.http_port:
        return None
    from dicom_node.http.server import HttpServer

    http = HttpServer(node, config.http_host, config.http_port)
    try:
        http.bind()
    except OSError as exc:
        node.db.dispose()
        where = f"{config.http_host}:{config.http_port}"
        raise CLIError(f"cannot listen for HTTP on {where}: {exc.strerror or exc}") from exc
    return http


def cmd_worker(args: argparse.Namespace) -> int:
    from dicom_node.roles.worker import WorkerNode

    config = _node_config(args)
    try:
        node = WorkerNode.compose(config, registry_of(args))
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    with SignalPipe() as signals:
        try:
            node.start()
        except KeyError as exc:
            node.db.dispose()
            raise CLIError(str(exc.args[0] if exc.args else exc)) from exc
        print(node.description, flush=True)
        signals.wait_for_stop()
        node.stop()
    return 0


def cmd_echo(args: argparse.Namespace) -> int:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from dicom_node.config import ConfigError, Destination

    try:
        dest = Destination.parse(args.destination)
    except ConfigError as exc:
        raise CLIError(str(exc)) from exc
    ae = AE(ae_title=args.calling_ae)
    ae.add_requested_context(Verification)
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        raise CLIError(f"no association with {dest}")
    rsp = assoc.send_c_echo()
    assoc.release()
    status = int(rsp.Status) if rsp is not None and "Status" in rsp else None
    print(f"C-ECHO {dest}: " + ("success" if status == 0 else f"status {status}"))
    return 0 if status == 0 else 1


def cmd_send(args: argparse.Namespace) -> int:
    from dicom_node.config import ConfigError, Destination
    from dicom_node.delivery.associations import send_files

    try:
        dest = Destination.parse(args.destination)
    except ConfigError as exc:
        raise CLIError(str(exc)) from exc
    paths = [str(p) for p in args.files]
    for p in paths:
        if not Path(p).is_file():
            raise CLIError(f"no such file: {p}")
    results = send_files(args.calling_ae, dest, paths)
    failed = 0
    for path, (status, error) in zip(paths, results, strict=True):
        ok = status is not None and status in (0x0000, 0xB000, 0xB006, 0xB007)
        failed += not ok
        print(
            f"{path}: "
            + (f"status 0x{status:04X}" if status is not None else "not sent")
            + (f" ({error})" if error else "")
        )
    return 1 if failed else 0


def _open_db(args: argparse.Namespace) -> Any:
    from dicom_node.audit.records import AuditDB

    config = _node_config(args)
    if config.db_url:
        try:
            return AuditDB(config.db_url)
        except Exception as exc:
            from dicom_node.audit.database import redacted

            raise CLIError(f"cannot open the database {redacted(config.db_url)}: {type(exc).__name__}") from exc
    if not config.db_path.is_file():
        raise CLIError(f"no audit database at {config.db_path} (use --data-dir or --db-url)")
    return AuditDB(config.db_path)


def cmd_audit(args: argparse.Namespace) -> int:
    from dicom_node.audit.report import audit_report, format_audit

    db = _open_db(args)
    report = audit_report(db, since=args.since, limit=args.limit)
    print(json.dumps(report, indent=2, default=str) if args.json else format_audit(report))
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from dicom_node.reference.metrics import format_metrics, metrics_report

    config = _node_config(args)
    alert_below = config.accuracy_alert_below if args.alert_below is None else args.alert_below
    recent = config.accuracy_recent if args.recent is None else args.recent
    if not 0.0 <= alert_below <= 1.0 or recent < 1:
        raise CLIError("need 0 <= --alert-below <= 1 and --recent >= 1")
    report = metrics_report(_open_db(args), recent, alert_below, model=args.only_model)
    print(json.dumps(report, indent=2) if args.json else format_metrics(report))
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from dicom_node.delivery.sender import requeue_deliveries

    n = requeue_deliveries(_open_db(args), include_failed=args.failed)
    print(f"{n} deliveries due now (the running node sends them within a second)")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from dicom_node.retention.prune import format_prune, parse_duration, prune
    from dicom_node.storage import Storage

    config = _node_config(args)
    policy = config.retention
    if args.older_than is not None:
        try:
            policy = policy.with_age(parse_duration(args.older_than))
        except ValueError as exc:
            raise CLIError(str(exc)) from exc
    report = prune(_open_db(args), Storage(config.data_dir), policy, dry_run=args.dry_run, sweep=True)
    print(json.dumps(report.to_json(), indent=2) if args.json else format_prune(report))
    return 0


def _workers(value: str) -> int | str:
    """``--workers``: a number of threads, or ``auto``."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, not {value!r}") from None


def _node_flags(p: argparse.ArgumentParser, serve: bool = False, worker: bool = False) -> None:
    p.add_argument("--config", help="TOML config file (default: $SPINENODE_CONFIG or config/node.toml)")
    p.add_argument("--data-dir", help="storage and SQLite audit database (default ./var)")
    p.add_argument(
        "--db-url",
        help="database URL (default: $SPINENODE_DB_URL, [database] url, else SQLite in the data directory), "
        "e.g. postgresql+psycopg://USER:PASSWORD@HOST:5432/spinenode",
    )
    p.add_argument("--ae-title")
    p.add_argument("--port", type=int)
    if serve or worker:
        p.add_argument("--lease-s", type=float, help="job/delivery lease: reclaimed this long after a worker dies")
    if worker:
        p.add_argument("--model", help="default model to load at start-up")
        p.add_argument("--workers", type=int, help="inference threads in this worker process (default 1)")
    if serve:
        p.add_argument("--bind", help="listen address (default 0.0.0.0)")
        p.add_argument(
            "--destination",
            action="append",
            metavar="AE@HOST:PORT|stow+https://HOST/PATH",
            help="C-STORE or DICOMweb STOW-RS destination (repeatable)",
        )
        p.add_argument("--model")
        p.add_argument("--allow-calling-ae", action="append", metavar="AE", help="repeatable")
        p.add_argument(
            "--workers",
            type=_workers,
            help="inference threads in this process (default 1), or auto: one worker process per core",
        )
        p.add_argument("--tls-cert", help="PEM certificate: the SCP accepts only DICOM over TLS")
        p.add_argument("--tls-key", help="PEM private key of --tls-cert")
        p.add_argument("--tls-ca", help="PEM CA bundle for client certificates and TLS destinations")
        p.add_argument(
            "--tls-require-client-cert", action="store_true", default=None, help="mutual TLS (needs --tls-ca)"
        )
        p.add_argument(
            "--tls-destination", action="append", metavar="AE@HOST:PORT", help="a destination reached over TLS"
        )
        p.add_argument("--http-port", type=int, help="also serve the web page and REST API on this port (0: off)")
        p.add_argument("--http-host", help="HTTP listen address (default 127.0.0.1; anything else is explicit)")


def add_node_commands(sub: Any) -> None:
    s = sub.add_parser("serve", help="run the DICOM node in the foreground")
    _node_flags(s, serve=True)
    s.set_defaults(func=cmd_serve)

    w = sub.add_parser("worker", help="run jobs from the shared queue (scale-out: see README)")
    _node_flags(w, worker=True)
    w.set_defaults(func=cmd_worker)

    e = sub.add_parser("echo", help="C-ECHO a peer")
    e.add_argument("destination", metavar="AE@HOST:PORT")
    e.add_argument("--calling-ae", default="SPINENODE")
    e.set_defaults(func=cmd_echo)

    sd = sub.add_parser("send", help="C-STORE files to a peer")
    sd.add_argument("destination", metavar="AE@HOST:PORT")
    sd.add_argument("files", nargs="+")
    sd.add_argument("--calling-ae", default="SPINENODE")
    sd.set_defaults(func=cmd_send)

    a = sub.add_parser("audit", help="recent jobs with outputs and delivery state")
    _node_flags(a)
    a.add_argument("--since", help="ISO date/time, e.g. 2026-11-30T10:00")
    a.add_argument("--limit", type=int, default=50)
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_audit)

    mt = sub.add_parser("metrics", help="each model's accuracy (Dice/Jaccard) against received reference SEGs")
    _node_flags(mt)
    mt.add_argument("--model", dest="only_model", metavar="NAME", help="only this model")
    mt.add_argument("--json", action="store_true")
    mt.add_argument("--alert-below", type=float, help="alert under this recent mean Dice (config: [metrics])")
    mt.add_argument("--recent", type=int, help="how many latest comparisons make the recent mean")
    mt.set_defaults(func=cmd_metrics)

    r = sub.add_parser("retry", help="make waiting deliveries due now")
    _node_flags(r)
    r.add_argument("--failed", action="store_true", help="also deliveries that gave up")
    r.set_defaults(func=cmd_retry)

    pr = sub.add_parser("prune", help="delete delivered data older than the retention policy (audited)")
    _node_flags(pr)
    pr.add_argument("--older-than", help="one age for images and outputs, e.g. 30d, 12h, 2w (default: [retention])")
    pr.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_prune)


__all__ = ["add_node_commands"]

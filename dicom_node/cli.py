"""The ``spinenode`` command line. Logging is configured here and nowhere else.

Commands: serve, worker, echo, send, segment, audit, metrics, retry, phantom, models (list / import), train, evaluate,
bench.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from inference.settings import InferenceSettings, RuntimeSelectionError

log = logging.getLogger(__name__)


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("pynetdicom", "PIL", "highdicom", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# --- node ------------------------------------------------------------------------------------------
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


def _registry(args: argparse.Namespace) -> Any:
    from inference.registry import ModelRegistry

    return ModelRegistry.from_settings(args.inference)


def _engine(args: argparse.Namespace, card: Any) -> Any:
    from inference.engine import Engine

    return Engine(card, runtime=args.inference.runtime, cache_dir=args.inference.cache_dir)


def cmd_serve(args: argparse.Namespace) -> int:
    from dicom_node.roles.node import Node

    config = _node_config(args)
    node = Node.compose(config, _registry(args))
    http = _bind_http(node, config)  # None unless --http-port / [http] port; bound before the node starts
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
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
    stop.wait()
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
        node = WorkerNode.compose(config, _registry(args))
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        node.start()
    except KeyError as exc:
        node.db.dispose()
        raise CLIError(str(exc.args[0] if exc.args else exc)) from exc
    print(node.description, flush=True)
    stop.wait()
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


def cmd_segment(args: argparse.Namespace) -> int:
    from dicom_node.roles.segment_file import segment_file

    try:
        summary = segment_file(Path(args.file), Path(args.out), args.model, models=_registry(args))
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise CLIError(str(exc.args[0] if exc.args else exc)) from exc
    print(json.dumps(summary, indent=2))
    return 0


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


# --- engine ----------------------------------------------------------------------------------------
def cmd_phantom(args: argparse.Namespace) -> int:
    from inference.data.phantom_dicom import write_phantoms

    index = write_phantoms(Path(args.out), args.n, args.seed, args.format)
    print(f"wrote {len(index)} phantom(s) to {args.out}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from inference.model_card import list_cards

    if args.models_command == "import":
        from inference.data.importer import import_checkpoint

        try:
            card = import_checkpoint(Path(args.path), args.name, args.inference.models_dir, args.display_name)
        except (OSError, ValueError) as exc:
            raise CLIError(str(exc)) from exc
        print(f"imported {args.path} as {card.name} ({card.architecture})")
        return 0
    if args.models_command == "calibrate":
        from inference.calibration import calibrate
        from inference.model_card import find_card

        try:
            card = find_card(args.name, args.inference.models_dir)
        except KeyError as exc:
            raise CLIError(str(exc.args[0])) from exc
        result = calibrate(_engine(args, card), n=args.n, seed=args.seed)
        card.logit_offsets = result.offsets
        card.training["calibration"] = {
            "phantoms": f"phantom:{args.n} (seeds {args.seed}..{args.seed + args.n - 1})",
            "offsets": result.offsets,
            "iou_before": result.before,
            "iou_after": result.after,
        }
        assert card.directory is not None  # a card found in the models directory
        card.save(card.directory)
        print(f"{card.name}: logit offsets {result.offsets}; V/T1 IoU {result.before} -> {result.after}")
        return 0
    cards = list_cards(args.inference.models_dir, parts=True)  # second passes too, marked by their role
    if args.json:
        print(json.dumps([c.to_json() for c in cards], indent=2))
    else:
        for c in cards:
            # real models: the validation split of real radiographs; demo models: held-out phantoms
            recorded = [(k, c.metrics[k]) for k in ("validation", "phantom_eval") if c.metrics.get(k)]
            where, figures = recorded[0] if recorded else ("-", {})
            per_class: dict[str, Any] = figures.get("per_class", {})
            v, t1 = per_class.get("V", {}), per_class.get("T1", {})
            print(
                f"{c.name:30s} {c.architecture:20s} {str(c.encoder):13s} {c.input_size[0]}x{c.input_size[1]}"
                f"  demo={c.demo!s:5}  V IoU {v.get('iou', '-')}  T1 IoU {t1.get('iou', '-')}  ({where})"
                + (f"  [{c.role} pass]" if c.role != "segmentation" else "")
                + (f"  + {c.top_pass}" if c.top_pass else "")
            )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from inference.data.datasets import DataSpecError
    from inference.learning.training import main_train_args_to_config, train

    if args.data.startswith("spineweb16:"):
        from inference.data.spineweb import SpineWebError
        from inference.learning.level_training import config_from_args, train_levels

        try:
            card = train_levels(config_from_args(args))
        except SpineWebError as exc:
            raise CLIError(str(exc)) from exc
        print(json.dumps({"model": card.name, "best_val": card.training["best_val_model_resolution"]}, indent=2))
        return 0
    try:
        card = train(main_train_args_to_config(args))
    except DataSpecError as exc:
        raise CLIError(str(exc)) from exc
    print(json.dumps({"model": card.name, "best_val": card.training["best_val"], "metrics": card.metrics}, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from inference.data.datasets import DataSource, DataSpecError
    from inference.learning.training import evaluate_engine
    from inference.model_card import find_card

    if args.data:
        return _evaluate_spineweb(args)
    try:
        card = find_card(args.model, args.inference.models_dir)
        source = (
            DataSource.parse(f"coco:{args.coco}")
            if args.coco
            else DataSource.parse(f"phantom:{args.phantom}", args.seed)
        )
    except (KeyError, DataSpecError) as exc:
        raise CLIError(str(exc.args[0] if exc.args else exc)) from exc
    result = evaluate_engine(_engine(args, card), source.load(), progress=not args.json)
    result["data"] = source.describe()
    if args.record:  # keep the figures in the model card (e.g. the held-out phantom evaluation)
        card.metrics[args.record] = result
        assert card.directory is not None  # a card found in the models directory
        card.save(card.directory)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{card.name} on {result['data']}: {result['n_images']} images")
        for cls, m in result["per_class"].items():
            print(f"  {cls:3s} IoU {m['iou']}  Dice {m['dice']}  (per-image mean IoU {m['iou_mean_per_image']})")
    return 0


def _evaluate_spineweb(args: argparse.Namespace) -> int:
    from inference.data.spineweb import SpineWebError
    from inference.learning.level_evaluation import evaluate_spineweb
    from inference.model_card import find_card

    kind, _, directory = args.data.partition(":")
    if kind != "spineweb16" or not directory:
        raise CLIError(f"--data takes spineweb16:DIR (got {args.data!r})")
    try:
        card = find_card(args.model, args.inference.models_dir)
        engine = _engine(args, card)
        result = evaluate_spineweb(engine, Path(directory), fit_quality=args.fit_quality, progress=not args.json)
    except (KeyError, SpineWebError) as exc:
        raise CLIError(str(exc.args[0] if exc.args else exc)) from exc
    if args.fit_quality:
        card.quality_thresholds = result["quality_fit"]["thresholds"]
    if args.record or args.fit_quality:
        if args.record:
            card.metrics[args.record] = result
        card.save(card.directory)  # type: ignore[arg-type]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{card.name} on {result['data']}")
        for cls, m in result["per_class"].items():
            q = m["iou_per_image"]
            print(
                f"  {cls:3s} IoU {m['iou']}  Dice {m['dice']}  per-image IoU median {q['median_per_image']}"
                f" p10 {q['p10_per_image']}"
            )
        print(f"  T1 found (IoU > 0.3) on {100 * result['t1_found_share']:.1f} % of images")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from bench.node_bench import main as bench_main
    from dicom_node.config import DEFAULT_MODEL
    from inference.model_card import find_card

    model = args.model or DEFAULT_MODEL
    try:
        find_card(model, args.inference.models_dir)
    except KeyError as exc:
        raise CLIError(str(exc.args[0])) from exc
    profile = Path(args.profile) if args.profile else None
    return bench_main(model, args.json, args.quick, args.height, profile, args.inference)


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
        p.add_argument("--workers", type=int, help="inference threads")
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spinenode", description="SpineNode: a DICOM AI node for spine radiographs")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

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

    sg = sub.add_parser("segment", help="segment one DICOM/PNG/JPEG file offline")
    sg.add_argument("file")
    sg.add_argument("--out", required=True)
    sg.add_argument("--model", default=None, help="default: the configured default model")
    sg.set_defaults(func=cmd_segment)

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

    ph = sub.add_parser("phantom", help="write synthetic spine radiographs with masks")
    ph.add_argument("--out", required=True)
    ph.add_argument("--n", type=int, default=1)
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--format", choices=("dicom", "png"), default="dicom")
    ph.set_defaults(func=cmd_phantom)

    m = sub.add_parser("models", help="list models, or import a seed checkpoint")
    m.add_argument("--json", action="store_true")
    msub = m.add_subparsers(dest="models_command")
    mi = msub.add_parser("import", help="import a seed app .pth (bare state_dict)")
    mi.add_argument("path")
    mi.add_argument("--name", required=True)
    mi.add_argument("--display-name")
    mc = msub.add_parser("calibrate", help="fit per-class logit offsets on held-out phantoms")
    mc.add_argument("name")
    mc.add_argument("--n", type=int, default=40)
    mc.add_argument("--seed", type=int, default=600000, help="first phantom seed (calibration only)")
    m.set_defaults(func=cmd_models)

    t = sub.add_parser("train", help="train a model on phantoms, COCO data or SpineWeb 16 (real radiographs)")
    t.add_argument("--arch", required=True)
    t.add_argument("--encoder", default="resnet50")
    t.add_argument("--data", required=True, help="phantom:N, coco:ANNOTATIONS.json:IMAGE_DIR or spineweb16:DIR")
    t.add_argument("--data-seed", type=int, default=0, help="first phantom seed")
    t.add_argument("--out", required=True)
    t.add_argument("--name")
    t.add_argument("--display-name")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--steps", type=int, help="stop after this many optimiser steps")
    t.add_argument("--input-size", type=int, nargs=2, default=(384, 128), metavar=("H", "W"))
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--init-from", help="start from these weights (staged fine-tuning)")
    t.add_argument("--threads", type=int)
    t.add_argument("--not-demo", action="store_true", help="weights are not synthetic-only")
    t.add_argument("--time-budget-min", type=float, help="spineweb16: end the schedule after this many minutes")
    t.add_argument("--resume", action="store_true", help="spineweb16: continue from OUT/checkpoint.pt")
    t.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="IoU/Dice of a model against phantoms, COCO data or SpineWeb 16")
    ev.add_argument("--model", required=True)
    g = ev.add_mutually_exclusive_group(required=True)
    g.add_argument("--phantom", type=int, metavar="N")
    g.add_argument("--coco", metavar="ANN.json:IMAGE_DIR")
    g.add_argument("--data", metavar="spineweb16:DIR", help="the fixed validation split of SpineWeb dataset 16")
    ev.add_argument("--fit-quality", action="store_true", help="spineweb16: fit the quality flag, store in the card")
    ev.add_argument("--seed", type=int, default=500000, help="first phantom seed (default: never used in training)")
    ev.add_argument("--json", action="store_true")
    ev.add_argument("--record", metavar="KEY", help="also store the result in the model card under metrics.KEY")
    ev.set_defaults(func=cmd_evaluate)

    b = sub.add_parser("bench", help="measure forward pass, node stages, latency, throughput, RSS, cold start")
    b.add_argument("--model", help="default: the default model")
    b.add_argument("--json", action="store_true")
    b.add_argument("--quick", action="store_true", help="small samples (a smoke test, not a measurement)")
    b.add_argument("--height", type=int, help="rows of the phantom DX (default 2500; --quick 512)")
    b.add_argument("--profile", metavar="DIR", help="also write a cProfile breakdown of each in-process stage to DIR")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        try:  # the one place the inference settings are read from the environment
            args.inference = InferenceSettings.from_environment(os.environ)
        except RuntimeSelectionError as exc:
            raise CLIError(str(exc)) from exc
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"spinenode: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The models' commands: segment, phantom, models (list / import / calibrate), train, evaluate, bench."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dicom_node.cli.common import CLIError, engine_of, registry_of


def cmd_segment(args: argparse.Namespace) -> int:
    from dicom_node.roles.segment_file import segment_file

    try:
        summary = segment_file(Path(args.file), Path(args.out), args.model, models=registry_of(args))
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise CLIError(str(exc.args[0] if exc.args else exc)) from exc
    print(json.dumps(summary, indent=2))
    return 0


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
        result = calibrate(engine_of(args, card), n=args.n, seed=args.seed)
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
    result = evaluate_engine(engine_of(args, card), source.load(), progress=not args.json)
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
        engine = engine_of(args, card)
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
    radiographs = Path(args.radiographs) if args.radiographs else None
    if radiographs is not None and not radiographs.is_dir():
        raise CLIError(f"--radiographs: {radiographs} is not a directory")
    return bench_main(model, args.json, args.quick, args.height, profile, args.inference, radiographs)


def add_model_commands(sub: Any) -> None:
    sg = sub.add_parser("segment", help="segment one DICOM/PNG/JPEG file offline")
    sg.add_argument("file")
    sg.add_argument("--out", required=True)
    sg.add_argument("--model", default=None, help="default: the configured default model")
    sg.set_defaults(func=cmd_segment)

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
    b.add_argument("--height", type=int, help="rows of the input DX (default 2500; --quick 512)")
    b.add_argument(
        "--radiographs",
        metavar="DIR",
        help="SpineWeb dataset 16 directory: send its validation radiographs instead of the phantom",
    )
    b.add_argument("--profile", metavar="DIR", help="also write a cProfile breakdown of each in-process stage to DIR")
    b.set_defaults(func=cmd_bench)


__all__ = ["add_model_commands"]

"""The ``spinenode`` command line. Logging is configured here and nowhere else.

Commands: serve, worker, echo, send, audit, metrics, retry, prune (``node_commands``); segment, phantom,
models (list / import / calibrate), train, evaluate, bench (``model_commands``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from dicom_node.cli.common import CLIError
from dicom_node.cli.model_commands import add_model_commands
from dicom_node.cli.node_commands import _node_config, add_node_commands
from inference.settings import InferenceSettings, RuntimeSelectionError

log = logging.getLogger(__name__)


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("pynetdicom", "PIL", "highdicom", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spinenode", description="SpineNode: a DICOM AI node for spine radiographs")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    add_node_commands(sub)
    add_model_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
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


__all__ = ["CLIError", "_node_config", "build_parser", "configure_logging", "main"]

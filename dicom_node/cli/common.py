"""What every ``spinenode`` command shares: the user-facing error, and the models as the command line
configures them (``InferenceSettings``, read from the environment once, in ``main``)."""

from __future__ import annotations

import argparse
from typing import Any


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def registry_of(args: argparse.Namespace) -> Any:
    from inference.registry import ModelRegistry

    return ModelRegistry.from_settings(args.inference)


def engine_of(args: argparse.Namespace, card: Any) -> Any:
    from inference.engine import Engine

    settings = args.inference
    return Engine(card, runtime=settings.runtime, cache_dir=settings.cache_dir, threads=settings.model_threads)


__all__ = ["CLIError", "engine_of", "registry_of"]

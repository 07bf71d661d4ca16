"""Loaded models, by name: each is loaded once on first use and kept warm."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from inference.model_card import find_card, list_cards
from inference.settings import (
    DEFAULT_CACHE_DIR,
    DEFAULT_MODEL_THREADS,
    DEFAULT_RUNTIME,
    PROJECT_MODELS_DIR,
    InferenceSettings,
)

if TYPE_CHECKING:
    from inference.engine import Engine

log = logging.getLogger(__name__)


class ModelRegistry:
    """The models of one directory, each run on ``runtime`` with exports cached in ``cache_dir`` and
    ``threads`` threads per forward pass."""

    def __init__(
        self,
        root: Path | None = None,
        runtime: str = DEFAULT_RUNTIME,
        cache_dir: Path = DEFAULT_CACHE_DIR,
        threads: int = DEFAULT_MODEL_THREADS,
    ) -> None:
        self.root = root or PROJECT_MODELS_DIR
        self.runtime = runtime
        self.cache_dir = cache_dir
        self.threads = threads
        self._engines: dict[str, Engine] = {}
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: InferenceSettings) -> ModelRegistry:
        return cls(settings.models_dir, settings.runtime, settings.cache_dir, settings.model_threads)

    def get(self, name: str) -> Engine:
        """The engine for ``name``; raises KeyError (unknown model) or the load error."""
        with self._lock:
            engine = self._engines.get(name)
            if engine is None:
                try:
                    # PyTorch is imported here, on first use (seconds): the node listens before that
                    from inference.engine import Engine

                    card = find_card(name, self.root)
                    engine = Engine(card, runtime=self.runtime, cache_dir=self.cache_dir, threads=self.threads)
                except Exception as exc:
                    self._errors[name] = f"{type(exc).__name__}: {exc}"
                    raise
                self._engines[name] = engine
                self._errors.pop(name, None)
                log.info("model %s loaded (%s, version %s)", name, engine.card.architecture, engine.card.version)
            return engine

    def status(self) -> list[dict[str, object]]:
        """Every model on disk with whether it is loaded (and why not, if loading failed)."""
        cards = {c.name: c for c in list_cards(self.root)}
        out = []
        for name in sorted(set(cards) | set(self._engines) | set(self._errors)):
            card = cards.get(name)
            engine = self._engines.get(name)
            out.append(
                {
                    "name": name,
                    "loaded": engine is not None,
                    "demo": bool(card and card.demo),
                    "error": self._errors.get(name),
                    "runtime": engine.runtime if engine is not None else None,
                    "fallback_reason": engine.runtime_info.get("fallback_reason") if engine is not None else None,
                    "onnx_check": engine.runtime_info.get("check") if engine is not None else None,
                }
            )
        return out

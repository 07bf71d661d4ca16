"""Where the models are and how they run: one typed value, read from the environment at the entry point.

Nothing below the command line reads the environment: ``dicom_node.cli`` builds ``InferenceSettings``
once with ``from_environment`` and hands it to the ``ModelRegistry``, which gives each ``Engine`` its
runtime and ONNX cache directory. Code that builds a registry or engine itself (tests, the benchmark)
gets the defaults below unless it passes others.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

MODELS_DIR_ENV = "SPINENODE_MODELS_DIR"  # the models directory (default: the project's models/)
RUNTIME_ENV = "SPINENODE_RUNTIME"  # "onnx" (default) or "torch"
CACHE_ENV = "SPINENODE_CACHE_DIR"  # where checked ONNX exports are kept
PROJECT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
RUNTIMES = ("onnx", "torch")
DEFAULT_RUNTIME = "onnx"  # ONNX Runtime on a checked export; torch when that fails
DEFAULT_CACHE_DIR = Path("~/.cache/spinenode/onnx")
DEFAULT_MODEL_THREADS = 2  # ONNX Runtime intra-op threads of one forward pass: both cores of a 2-core machine


class RuntimeSelectionError(ValueError):
    """An unknown runtime name."""


def checked_runtime(name: str, source: str = "runtime") -> str:
    runtime = name.strip().lower()
    if runtime not in RUNTIMES:
        raise RuntimeSelectionError(f"{source}={name!r}: choose one of {', '.join(RUNTIMES)}")
    return runtime


@dataclass(frozen=True)
class InferenceSettings:
    models_dir: Path = PROJECT_MODELS_DIR
    runtime: str = DEFAULT_RUNTIME
    cache_dir: Path = DEFAULT_CACHE_DIR
    model_threads: int = DEFAULT_MODEL_THREADS  # per forward pass (1 in each of ``--workers auto``'s processes)

    def __post_init__(self) -> None:
        if self.model_threads < 1:
            raise ValueError(f"model_threads must be 1 or more, not {self.model_threads}")
        object.__setattr__(self, "runtime", checked_runtime(self.runtime))
        object.__setattr__(self, "cache_dir", Path(self.cache_dir).expanduser())

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> InferenceSettings:
        """``$SPINENODE_MODELS_DIR``, ``$SPINENODE_RUNTIME`` and ``$SPINENODE_CACHE_DIR``, each where set."""
        runtime = environ.get(RUNTIME_ENV) or DEFAULT_RUNTIME
        return cls(
            models_dir=Path(environ.get(MODELS_DIR_ENV) or PROJECT_MODELS_DIR),
            runtime=checked_runtime(runtime, RUNTIME_ENV),
            cache_dir=Path(environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR),
        )

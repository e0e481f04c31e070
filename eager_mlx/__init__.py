"""eager-mlx: entropy-aware adaptive generation (EAGer) on MLX.

    >>> import eager_mlx
    >>> loaded = eager_mlx.load()                      # the default preset, fetched once
    >>> result = eager_mlx.solve(loaded, "What is 12*12? Put the final answer in \\\\boxed{}.")
    >>> result.answer, result.num_sequences, result.generated_tokens

`stream_solve` yields events (TokenEvent, BranchEvent, SequenceFinished,
RunFinished) for apps; `Engine` is the batched engine under both.
"""
from importlib.metadata import PackageNotFoundError, version as _version

from .cpu_blas import preload_openblas

preload_openblas()  # must run before mlx.core is imported (Linux CPU build only)

from .adaptive.confidence import ConfidenceConfig, confidence_vote  # noqa: E402
from .config import EagerConfig, SamplingConfig  # noqa: E402
from .adaptive.consensus import ConsensusConfig  # noqa: E402
from .engine.engine import Engine  # noqa: E402
from .api import config_for, encode_prompt, load, solve, stream_solve  # noqa: E402
from .results import (  # noqa: E402
    BranchEvent,
    RunFinished,
    RunResult,
    SequenceFinished,
    SequenceResult,
    TokenEvent,
)

try:
    __version__ = _version("eager-mlx")  # declared once, in pyproject.toml
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "unknown"

__all__ = [
    "load",
    "solve",
    "stream_solve",
    "encode_prompt",
    "config_for",
    "Engine",
    "EagerConfig",
    "SamplingConfig",
    "ConfidenceConfig",
    "ConsensusConfig",
    "confidence_vote",
    "RunResult",
    "SequenceResult",
    "TokenEvent",
    "BranchEvent",
    "SequenceFinished",
    "RunFinished",
]

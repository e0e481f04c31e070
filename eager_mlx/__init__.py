"""eager-mlx: entropy-aware adaptive generation (EAGer) on MLX.

    >>> import eager_mlx
    >>> loaded = eager_mlx.load()                      # the default preset, fetched once
    >>> result = eager_mlx.solve(loaded, "What is 12*12? Put the final answer in \\\\boxed{}.")
    >>> result.answer, result.num_sequences, result.generated_tokens

`stream_solve` yields events (TokenEvent, BranchEvent, SequenceFinished,
RunFinished) for apps; `Engine` is the batched engine under both.
"""
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version as _version

from .cpu_blas import preload_openblas

preload_openblas()  # must run before mlx.core is imported (Linux CPU build only)

# Imported on first use (PEP 562), so `import eager_mlx` is quick: the command line can catch a Ctrl-C while
# the heavy modules (mlx, the engine) load, instead of dying with a traceback inside an import.
_EXPORTS = {
    "load": ".api", "solve": ".api", "stream_solve": ".api", "encode_prompt": ".api", "config_for": ".api",
    "Engine": ".engine.engine",
    "EagerConfig": ".config", "SamplingConfig": ".config",
    "ConfidenceConfig": ".adaptive.confidence", "confidence_vote": ".adaptive.confidence",
    "ConsensusConfig": ".adaptive.consensus",
    "RunResult": ".results", "SequenceResult": ".results", "TokenEvent": ".results", "BranchEvent": ".results",
    "SequenceFinished": ".results", "RunFinished": ".results",
}

try:
    __version__ = _version("eager-mlx")  # declared once, in pyproject.toml
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "unknown"

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'eager_mlx' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # once: later lookups do not come here
    return value

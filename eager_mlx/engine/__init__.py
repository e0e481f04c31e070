"""The batched decode engine: KV layout (kv), in-graph token statistics (sampling),
the branch rule (branching) and the step loop (engine)."""
from .engine import Engine

__all__ = ["Engine"]

"""The one error type of eager_mlx.models."""
from __future__ import annotations

__all__ = ["ModelError"]


class ModelError(Exception):
    """A model could not be found, fetched, read or converted (one-line message)."""

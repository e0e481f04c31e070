"""The one error type of eager_mlx.models."""
from __future__ import annotations

__all__ = ["ModelError", "one_line"]


class ModelError(ValueError):
    """A model could not be found, fetched, read or converted (one-line message)."""


def one_line(e: BaseException) -> str:
    """``TypeName: first line of the message``, for wrapping foreign errors into a ModelError."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__

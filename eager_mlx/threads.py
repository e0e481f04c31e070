"""Running MLX work on a thread other than the main one.

MLX streams are per thread: a thread that decodes creates its own streams, and
with mlx 0.32 a thread that ran a compiled function (mlx-lm's models do) and
ends without destroying its streams makes the process abort at exit
("terminate called without an active exception"). `mx.clear_streams()` fixes
that, but only as the thread's last MLX call: after it, MLX work on that thread
fails. `start_mlx_thread` runs a function on a new thread and clears its
streams when the function returns or raises.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional

import mlx.core as mx

__all__ = ["start_mlx_thread", "release_thread_streams"]


def release_thread_streams() -> None:
    """Destroy the calling thread's MLX streams; call it last, just before a worker thread ends."""
    if threading.current_thread() is not threading.main_thread():
        mx.clear_streams()


def start_mlx_thread(target: Callable[..., Any], *args: Any, name: Optional[str] = None,
                     daemon: bool = True) -> threading.Thread:
    """Start a thread running `target(*args)` that releases its MLX streams when it ends."""

    def run() -> None:
        try:
            target(*args)
        finally:
            release_thread_streams()

    thread = threading.Thread(target=run, name=name, daemon=daemon)
    thread.start()
    return thread

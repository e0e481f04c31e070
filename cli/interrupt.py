"""SIGINT / SIGTERM during a long command: stop, say in one line how to continue, exit 128 + the signal number.

The handler raises `Interrupted` (a BaseException, so no `except Exception` in
the library swallows it) where the main thread is; what was written stays
written (the evaluation's journals are flushed and fsynced record by record,
and closed as the exception unwinds). 130 for SIGINT and 143 for SIGTERM are
the shell's codes for a process ended by those signals.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import click

__all__ = ["Interrupted", "stop_on_signals"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise(signum: int, frame: object) -> None:
    raise Interrupted(signum)


@contextmanager
def stop_on_signals(hint: Callable[[], str]) -> Iterator[None]:
    """Inside: SIGINT / SIGTERM stop the command with "interrupted (SIGNAME): <hint()>" on stderr and exit code
    128 + signum. Outside the main thread (where handlers cannot be set) signals keep their default."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _raise) for s in SIGNALS}
    try:
        yield
    except Interrupted as e:
        for s in SIGNALS:  # a second Ctrl-C while we report must not give a traceback
            signal.signal(s, signal.SIG_IGN)
        click.echo(f"interrupted ({signal.Signals(e.signum).name}): {hint()}", err=True)
        raise click.exceptions.Exit(128 + e.signum) from None
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)

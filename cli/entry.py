"""The `eager-mlx` console script: the click app (cli/main.py) loaded inside a guard.

Loading the commands imports mlx and the engine (a second or more); a Ctrl-C then would end in a traceback
from inside an import. Here it ends in one line and exit code 130, as a Ctrl-C in a running command does.
"""
from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    """Run the eager-mlx command line (the console script's entry point)."""
    try:
        from .main import cli
    except KeyboardInterrupt:
        sys.stderr.write("interrupted (SIGINT) while starting: nothing was done\n")
        sys.exit(130)
    cli()

"""The `eager-mlx` console script: the click app (cli/main.py) loaded inside a guard.

Loading the commands imports mlx and the engine (a second or more); a Ctrl-C then would end in a traceback
from inside an import. Here it ends in one line and exit code 130, as a Ctrl-C in a running command does.
An MLX that cannot load (Linux without a backend package) is one line too, and two backend packages
installed at once (they overwrite each other's libmlx.so) get a warning.
"""
from __future__ import annotations

import sys
from typing import Optional

__all__ = ["main", "backend_warning"]

BACKENDS = ("mlx-cpu", "mlx-cuda-12", "mlx-cuda-13")  # MLX's Linux backends: each ships mlx/lib/libmlx.so


def backend_warning(installed: list[str]) -> Optional[str]:
    """A warning when more than one MLX backend package is installed (`installed`: their names), else None."""
    if len(installed) < 2:
        return None
    return (f"warning: {' and '.join(installed)} are installed together; they ship the same libmlx.so, so the one "
            "installed last is in use: keep one (scripts/setup --cpu or --cuda)")


def _installed_backends() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in BACKENDS:
        try:
            version(name)
            found.append(name)
        except PackageNotFoundError:
            pass
    return found


def main() -> None:
    """Run the eager-mlx command line (the console script's entry point)."""
    try:
        warning = backend_warning(_installed_backends())
        if warning:
            sys.stderr.write(warning + "\n")
        from .main import cli
    except KeyboardInterrupt:
        sys.stderr.write("interrupted (SIGINT) while starting: nothing was done\n")
        sys.exit(130)
    except ImportError as e:
        if "mlx" not in str(e):
            raise
        sys.stderr.write(f"Error: MLX cannot load ({str(e).splitlines()[0]}); on Linux it needs one backend: "
                         "scripts/setup, or pip install 'eager-mlx[cpu]' (or [cuda])\n")
        sys.exit(1)
    cli()

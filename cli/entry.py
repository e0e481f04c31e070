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


def _caused_by_interrupt(error: BaseException) -> bool:
    seen = error.__cause__ or error.__context__
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _interrupted() -> None:
    sys.stderr.write("interrupted (SIGINT) while starting: nothing was done\n")
    sys.exit(130)


def main() -> None:
    """Run the eager-mlx command line (the console script's entry point)."""
    try:
        warning = backend_warning(_installed_backends())
        if warning:
            sys.stderr.write(warning + "\n")
        from .main import cli
    except KeyboardInterrupt:
        _interrupted()
    except ImportError as e:
        if _caused_by_interrupt(e):  # mlx turns a Ctrl-C during its own initialisation into an ImportError
            _interrupted()
        if "mlx" not in str(e) and not (e.name or "").startswith("mlx"):
            raise
        sys.stderr.write(f"Error: MLX cannot load ({str(e).splitlines()[0]}); on Linux it needs one backend: "
                         "scripts/setup, or pip install 'eager-mlx[cpu]' (or [cuda])\n")
        sys.exit(1)
    cli()

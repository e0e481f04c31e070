"""Make MLX's Linux CPU build use Debian's OpenBLAS for matmul.

The ``mlx[cpu]`` wheel links the reference BLAS (about 5 GFLOP/s for a
1024x1024 fp32 matmul here). Loading ``libopenblas.so.0`` with RTLD_GLOBAL
before ``mlx.core`` is imported makes MLX resolve its BLAS symbols there
instead (about 30x faster). Install it with ``apt-get install libopenblas0-pthread``.
Set ``EAGER_MLX_NO_OPENBLAS=1`` to turn this off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import sysconfig
from pathlib import Path

__all__ = ["find_openblas", "preload_openblas"]

log = logging.getLogger(__name__)

_LIBNAME = "libopenblas.so.0"
_loaded: str | None = None


def find_openblas() -> str | None:
    """The path of Debian's ``libopenblas.so.0``, or None when it is not installed."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    candidates = []
    for lib in ("/usr/lib", "/lib"):
        for sub in ("openblas-pthread", "openblas-openmp", "openblas-serial", ""):
            candidates.append(Path(lib, multiarch, sub, _LIBNAME))
    for path in candidates:
        if path.is_file():
            return str(path)
    found = ctypes.util.find_library("openblas")  # asks ldconfig
    return found if found and found.startswith("libopenblas.so") else None


def preload_openblas() -> str | None:
    """Load OpenBLAS globally so MLX's CPU matmul uses it; return its path or None.

    Does nothing (returns None) off Linux, when ``EAGER_MLX_NO_OPENBLAS=1``,
    when the library is absent, or when ``mlx.core`` is already imported
    (too late: its BLAS symbols are already bound).
    """
    global _loaded
    if _loaded is not None:
        return _loaded
    if not sys.platform.startswith("linux") or os.environ.get("EAGER_MLX_NO_OPENBLAS") == "1":
        return None
    if "mlx.core" in sys.modules:
        log.debug("mlx.core already imported; not preloading OpenBLAS")
        return None
    path = find_openblas()
    if path is None:
        return None
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        log.debug("could not load %s: %s", path, e)
        return None
    _loaded = path
    log.debug("using OpenBLAS for MLX CPU matmul: %s", path)
    return path

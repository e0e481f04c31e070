"""Digests of model folders: recorded when a model is converted, checked each time it is loaded.

A converted folder holds ``eager-mlx.sha256``: one line per file, ``<sha256>  <name>`` (the format of
``sha256sum``, so ``sha256sum -c eager-mlx.sha256`` checks it too). `verify_digests` re-hashes every file
before the model is used: a changed block, a missing file or a file that was not there at conversion (mlx-lm
would load any extra ``*.safetensors``) is refused. Hashing reads each byte once (about 0.5-1 GB/s on one core;
BENCHMARKS.md, "Checking converted models").

`model_folder_digest` is one SHA-256 naming a whole model folder (its files' names and contents), for records
that must say which weights produced them.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from eager_mlx.packages import sha256_of

from .errors import ModelError

__all__ = ["DIGESTS", "file_digests", "model_folder_digest", "read_digests", "record_digests", "verify_digests"]

DIGESTS = "eager-mlx.sha256"


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != DIGESTS)


def file_digests(folder: str | Path) -> dict[str, str]:
    """The SHA-256 of every file under `folder` (names relative to it, '/'-separated), the digest list aside."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): sha256_of(p) for p in _files(folder)}


def model_folder_digest(folder: str | Path, digests: dict[str, str] | None = None) -> str:
    """"sha256:<hex>" of a model folder: of its files' names and SHA-256s, sorted by name. `digests` (from
    `file_digests` or `verify_digests`) saves hashing the files again."""
    listing = "".join(f"{d}  {name}\n" for name, d in sorted((digests or file_digests(folder)).items()))
    return "sha256:" + hashlib.sha256(listing.encode()).hexdigest()


def record_digests(folder: str | Path) -> dict[str, str]:
    """Write `folder`'s digest list (at conversion, before the folder is renamed into the cache)."""
    digests = file_digests(folder)
    (Path(folder) / DIGESTS).write_text("".join(f"{d}  {name}\n" for name, d in digests.items()))
    return digests


def read_digests(folder: str | Path) -> dict[str, str] | None:
    """The recorded digest list of `folder`, or None when it has none (not converted by eager-mlx, or by a
    version before digests were recorded)."""
    path = Path(folder) / DIGESTS
    if not path.is_file():
        return None
    digests = {}
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name:
            raise ModelError(f"{path}:{n}: not a '<sha256>  <file>' line: the digest list is damaged")
        digests[name] = digest
    return digests


def verify_digests(folder: str | Path) -> dict[str, str] | None:
    """Check every file of `folder` against its recorded digest list; return the digests, or None when none
    were recorded. ModelError (one line, naming the file) on a changed, missing or unexpected file."""
    folder = Path(folder)
    expected = read_digests(folder)
    if expected is None:
        return None
    actual = file_digests(folder)
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            raise ModelError(f"{folder / name}: missing (it was written at conversion)")
        if name not in expected:
            raise ModelError(f"{folder / name}: a file that was not there at conversion")
        if actual[name] != expected[name]:
            raise ModelError(f"{folder / name}: sha256 is {actual[name]}, expected {expected[name]} (recorded at "
                             "conversion): the file has changed")
    return actual

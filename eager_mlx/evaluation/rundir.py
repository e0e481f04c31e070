"""The run directory of an evaluation: its files, its journals, and the checks before a run starts or resumes.

Files: ``manifest.json`` (what was run: model, dataset, settings; written
atomically) and three journals, JSONL files appended one record a line,
flushed and fsynced: ``results.jsonl`` (one record per prompt), ``runs.jsonl``
(every finished run) and ``trees.jsonl`` (branch trees, with ``--save-trace``).
A kill can tear only a journal's last line. Every journal is read and repaired
the same way (`read_records`): a torn last line is ignored, and cut off the
file before a resume appends to it; any other bad line is an error naming
file and line.

A fresh run needs a directory whose journals are empty. A resume needs the
manifest (without it the records' settings cannot be checked) and the same
model, dataset and settings (`RESUME_MAY_CHANGE` aside).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "EvalError",
    "MANIFEST",
    "RESULTS",
    "JOURNAL",
    "TRACES",
    "JOURNALS",
    "RESUME_MAY_CHANGE",
    "Journal",
    "read_records",
    "read_manifest",
    "write_json_atomic",
    "load_run",
    "check_run_dir",
    "prepare_run_dir",
]

MANIFEST = "manifest.json"
RESULTS = "results.jsonl"
JOURNAL = "runs.jsonl"  # every finished run, so a resume also keeps runs of prompts not yet complete
TRACES = "trees.jsonl"  # branch trees of finished runs (--save-trace)
JOURNALS = (RESULTS, JOURNAL, TRACES)
# settings that may change between a run and its resume without changing any decision
RESUME_MAY_CHANGE = ("max_rows", "save_text", "grade_timeout")
# Settings added after run folders were first written, with the value that behaves as before they existed: a
# folder without one resumes when the setting has that value.
SETTINGS_ADDED = {"settings.scheduler.policy": "hit-m", "settings.scheduler.budget": 1.0,
                  "settings.scheduler.wave_runs": 8, "settings.scheduler.round_size": 2,
                  "settings.eager.branch_rule": "top2"}
_MANIFEST_KEYS = ("model", "method", "dataset", "settings")


class EvalError(Exception):
    """The evaluation cannot start or continue; the message is one line."""


def read_records(path: Path, repair: bool = False) -> list[dict]:
    """The records (JSON objects, one a line) of a journal; a torn last line is skipped (and cut off the file
    with `repair`). Any other line that is not a JSON object raises EvalError naming file and line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise EvalError(f"{path}: cannot read ({e.strerror})") from None
    end = data.rfind(b"\n") + 1
    lines = data[:end].split(b"\n")[:-1]
    records = []
    for n, line in enumerate(lines, 1):
        record = _parse(line)
        if record is None:
            if n < len(lines):
                raise EvalError(f"{path}:{n}: corrupt record (not the last line: not a torn write)")
            end -= len(line) + 1  # a torn last line that happens to end in a newline
        else:
            records.append(record)
    if repair and end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    return records


def _parse(line: bytes) -> dict | None:
    """A journal line as a JSON object, or None when it is not one (torn, not UTF-8, not JSON)."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


@dataclass(frozen=True)
class Journal:
    """One journal file of a run directory (see the module docstring)."""

    path: Path

    def append(self, record: dict) -> None:
        """Append one record as a line, flushed and fsynced (the file is closed again, so nothing is buffered)."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self, repair: bool = False) -> list[dict]:
        return read_records(self.path, repair)

    def holds_data(self) -> bool:
        return self.path.exists() and self.path.stat().st_size > 0


def read_manifest(path: Path) -> dict:
    """A run's manifest; EvalError naming the file (and line) when it is missing, unreadable or not a manifest."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise EvalError(f"{path.parent}: no {MANIFEST}: not a run directory") from None
    except OSError as e:
        raise EvalError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise EvalError(f"{path}: corrupt (byte {e.start} is not UTF-8)") from None
    except json.JSONDecodeError as e:
        raise EvalError(f"{path}:{e.lineno}: corrupt ({e.msg})") from None
    missing = [k for k in _MANIFEST_KEYS if not isinstance(manifest, dict) or k not in manifest]
    if missing:
        raise EvalError(f"{path}: not an eager-mlx manifest (no {missing[0]!r})")
    return manifest


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write `obj` as JSON to `path` through a temporary file, so a kill leaves the old file or the new one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """The manifest and the records of a run directory (records sorted by prompt index)."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir / MANIFEST)
    records = Journal(run_dir / RESULTS).read()
    _check_indices(run_dir / RESULTS, records)
    return manifest, sorted(records, key=lambda r: r["index"])


def _check_indices(path: Path, records: list[dict]) -> None:
    seen: set[int] = set()
    for n, r in enumerate(records, 1):
        i = r.get("index")
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise EvalError(f"{path}: record {n} has no prompt index")
        if i in seen:
            raise EvalError(f"{path}: prompt {i} recorded twice")
        seen.add(i)


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """The checks that need no model, made before any work: a fresh run needs empty journals, a resume needs a
    readable manifest."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise EvalError(f"{run_dir} exists and is not a directory")
    journals = [Journal(run_dir / name) for name in JOURNALS]
    if not resume:
        if any(j.holds_data() for j in journals):
            raise EvalError(f"{run_dir} already holds results: pass resume (--resume) or another directory")
        return
    if not (run_dir / MANIFEST).exists():
        held = [j.path.name for j in journals if j.holds_data()]
        if held:
            raise EvalError(f"cannot resume {run_dir}: {MANIFEST} is missing, so the settings of its "
                            f"{' and '.join(held)} cannot be checked")
        raise EvalError(f"cannot resume {run_dir}: no {MANIFEST}, nothing to resume (start it without resume)")
    read_manifest(run_dir / MANIFEST)


def prepare_run_dir(run_dir: Path, manifest: dict, resume: bool) -> tuple[list[dict], list[dict]]:
    """Create or check the run directory (see `check_run_dir`; a resume also needs the same settings); return the
    records and journaled runs to resume from, every journal repaired."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EvalError(f"cannot create the run directory {run_dir} ({e.strerror})") from None
    if not resume:
        write_json_atomic(run_dir / MANIFEST, manifest)
        return [], []
    old = read_manifest(run_dir / MANIFEST)
    keys = ("model", "dataset", "settings")
    diffs = _differences({k: old.get(k) for k in keys}, {k: manifest[k] for k in keys})
    if diffs:
        raise EvalError(f"cannot resume {run_dir}: settings differ ({', '.join(diffs[:5])})")
    records, runs, _ = (Journal(run_dir / name).read(repair=True) for name in JOURNALS)
    _check_indices(run_dir / RESULTS, records)
    return records, runs


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k in RESUME_MAY_CHANGE:
                continue
            if k not in a and SETTINGS_ADDED.get(f"{prefix}{k}", a) == b.get(k):
                continue
            out += _differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]

"""The run directory of an evaluation: its files, its journals, and the checks before a run starts or resumes.

Files: ``manifest.json`` (what was run: model, dataset, settings; written
atomically) and three journals, JSONL files appended one record a line,
flushed and fsynced: ``results.jsonl`` (one record per prompt), ``runs.jsonl``
(every finished run) and ``trees.jsonl`` (branch trees, with ``--save-trace``).
A kill can tear only a journal's last line. Every journal is read and repaired
the same way (`read_records`): a torn last line is ignored, and cut off the
file before a resume appends to it; any other bad line is an error naming
file and line.

One evaluation at a time: `run_lock` holds ``.lock`` in the directory (an
advisory lock the kernel drops when the process dies), so a second evaluation
on the same directory is refused at once, naming the holder. A fresh run needs
a new or empty directory (no file we did not write is ever overwritten); a
resume needs the manifest (without it the records' settings cannot be checked)
and the same model, dataset and settings (`RESUME_MAY_CHANGE` aside). Every
record read back is checked for the fields the evaluation and the report use:
a line that is JSON but not such a record is an error naming file and line.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eager_mlx.locks import LockHeld, hold

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
    "run_lock",
    "check_records",
    "LOCK",
]

MANIFEST = "manifest.json"
RESULTS = "results.jsonl"
JOURNAL = "runs.jsonl"  # every finished run, so a resume also keeps runs of prompts not yet complete
TRACES = "trees.jsonl"  # branch trees of finished runs (--save-trace)
LOCK = ".lock"  # held by the evaluation writing the directory
JOURNALS = (RESULTS, JOURNAL, TRACES)
# settings that may change between a run and its resume without changing any decision
RESUME_MAY_CHANGE = ("max_rows", "save_text", "grade_timeout")
# Settings added after run folders were first written, with the value that behaves as before they existed: a
# folder without one resumes when the setting has that value.
SETTINGS_ADDED = {"settings.scheduler.policy": "hit-m", "settings.scheduler.budget": 1.0,
                  "settings.scheduler.wave_runs": 8, "settings.scheduler.round_size": 2,
                  "settings.scheduler.first_samples": None,
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
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
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
    except RecursionError:
        raise EvalError(f"{path}: corrupt (nested too deeply)") from None
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
    check_records(run_dir / RESULTS, records)
    return manifest, sorted(records, key=lambda r: r["index"])


_NUMBER = (int, float)
# The fields the evaluation (resume) and the report read, and their types.
_SHAPES: dict[str, dict[str, Any]] = {
    "result": {"index": int, "runs": list, "sequences": list, "t_done": _NUMBER},
    "skipped": {"index": int, "skipped": str, "t_done": _NUMBER},
    "journal": {"index": int, "t_start": _NUMBER, "t": _NUMBER, "run": dict, "sequences": list},
    "run": {"request_id": str, "num_sequences": int, "generated_tokens": int, "prompt_tokens": int,
            "any_correct": bool},
    "sequence": {"run": str, "answer": (str, type(None)), "correct": bool, "finish_reason": str},
}


def _shape_problem(record: Any, shape: str) -> str | None:
    """What is wrong with `record` as a `shape` record (the first missing or mistyped field), or None."""
    if not isinstance(record, dict):
        return f"a {shape} must be an object"
    for key, kind in _SHAPES[shape].items():
        if key not in record:
            return f"no {key!r}" if shape in ("result", "skipped", "journal") else f"a {shape} has no {key!r}"
        value = record[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, _NUMBER)):
            return f"{shape} field {key!r} is {type(value).__name__}"
    if shape == "result":
        from eager_mlx.evaluation.metrics import PromptMetrics

        metrics, names = record.get("metrics"), PromptMetrics.__dataclass_fields__
        if not isinstance(metrics, dict) or not set(names) <= set(metrics):
            return "its 'metrics' lack " + (", ".join(sorted(set(names) - set(metrics))) if isinstance(metrics, dict)
                                            else "everything")
    inner = ([("run", r) for r in record["runs"]] if shape == "result" else [("run", record["run"])]
             if shape == "journal" else [])
    inner += [("sequence", q) for q in record.get("sequences", [])] if shape in ("result", "journal") else []
    return next((p for kind_, item in inner if (p := _shape_problem(item, kind_))), None)


def check_records(path: Path, records: list[dict], shape: str = "result") -> None:
    """EvalError naming file and line when a record (a results.jsonl record, or a `shape` "journal" entry of
    runs.jsonl) lacks a field the evaluation or the report reads, or a prompt is recorded twice."""
    seen: set[int] = set()
    for n, r in enumerate(records, 1):  # read_records keeps every line but a torn last one: record n is line n
        kind = "skipped" if shape == "result" and "skipped" in r else shape
        problem = _shape_problem(r, kind)
        if problem is None and r["index"] < 0:
            problem = "a negative prompt index"
        if problem is not None:
            what = "a run record" if shape == "journal" else "a prompt's record"
            raise EvalError(f"{path}:{n}: not {what} ({problem})")
        if shape == "result" and r["index"] in seen:
            raise EvalError(f"{path}: prompt {r['index']} recorded twice")
        seen.add(r["index"])


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """The checks that need no model, made before any work: a fresh run needs a new or empty directory, a resume
    needs a readable manifest and journals of well-formed records."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise EvalError(f"{run_dir} exists and is not a directory")
    journals = [Journal(run_dir / name) for name in JOURNALS]
    if not resume:
        if any(j.holds_data() for j in journals):
            raise EvalError(f"{run_dir} already holds results: pass resume (--resume) or another directory")
        from eager_mlx.evaluation.shards import SHARD_FILE  # a rank's folder gets it before its run starts

        found = sorted(p.name for p in run_dir.iterdir() if p.name not in (LOCK, SHARD_FILE)) if run_dir.is_dir() \
            else []
        if found:
            shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
            raise EvalError(f"{run_dir} is not empty (it holds {shown}): a new run needs a new or empty directory "
                            f"(or pass resume (--resume) to continue the run there)")
        return
    if not (run_dir / MANIFEST).exists():
        held = [j.path.name for j in journals if j.holds_data()]
        if held:
            raise EvalError(f"cannot resume {run_dir}: {MANIFEST} is missing, so the settings of its "
                            f"{' and '.join(held)} cannot be checked")
        raise EvalError(f"cannot resume {run_dir}: no {MANIFEST}, nothing to resume (start it without resume)")
    read_manifest(run_dir / MANIFEST)
    check_records(run_dir / RESULTS, read_records(run_dir / RESULTS))
    check_records(run_dir / JOURNAL, read_records(run_dir / JOURNAL), "journal")


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory (created if needed) for one evaluation; EvalError naming the holder when another
    process holds it. A directory this call created is removed again if nothing was written into it."""
    run_dir = Path(run_dir)
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EvalError(f"cannot create the run directory {run_dir} ({e.strerror})") from None
    try:
        with hold(run_dir / LOCK):
            yield
    except LockHeld as e:
        raise EvalError(f"{run_dir} is in use by another evaluation ({e.holder}): wait for it to end, or choose "
                        "another directory") from None
    finally:
        for folder in created:  # innermost first; stops at the first that holds something
            try:
                folder.rmdir()
            except OSError:
                break


def prepare_run_dir(run_dir: Path, manifest: dict, resume: bool) -> tuple[list[dict], list[dict]]:
    """Create or check the run directory, which the caller should hold (`run_lock`; see `check_run_dir`: a resume
    also needs the same settings); return the records and journaled runs to resume from, every journal repaired."""
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
    made, now = old.get("engine_format"), manifest.get("engine_format")
    if made is not None and made != now:  # (manifests written before 824f3d2 do not say)
        raise EvalError(f"cannot resume {run_dir}: its runs were sampled by another engine format ({made}; this one "
                        f"draws by format {now}), so the records would mix two samplers: start a new --out")
    records, runs, _ = (Journal(run_dir / name).read(repair=True) for name in JOURNALS)
    check_records(run_dir / RESULTS, records)
    check_records(run_dir / JOURNAL, runs, "journal")
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

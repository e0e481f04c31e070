"""Branch trees of an eval's runs: recorded to RUN_DIR/trees.jsonl during the run (`--save-trace`), read back
for the pages (`eager-mlx report --html`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from eager_mlx.evaluation.rundir import TRACES, Journal, read_records
from eager_mlx.results import RunResult
from eager_mlx.trees.tree import tree_from_result

__all__ = ["TRACES", "TraceRecorder", "read_traces"]


class TraceRecorder:
    """Appends the Tree of each finished run to `path` (JSONL, fsynced): pass it as an evaluation's `on_run`."""

    def __init__(self, path: Path, tokenizer: Any = None):
        self.journal = Journal(Path(path))  # a run journal: a resume repairs it with the others (rundir.py)
        self.tokenizer = tokenizer

    def __call__(self, result: RunResult) -> None:
        tree = tree_from_result(result, self.tokenizer, keep_text=False)
        self.journal.append({"request_id": result.request_id, "tree": tree.to_dict()})


def read_traces(run_dir: Path) -> dict[str, dict]:
    """Request id -> saved Tree dict of one run directory (a torn last line is skipped)."""
    return {e["request_id"]: e["tree"] for e in read_records(Path(run_dir) / TRACES)}

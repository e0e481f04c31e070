"""Branch-tree pages for eval runs: record each run's Tree while evaluating, write one page per prompt.

`TraceRecorder` wraps an engine (the engine contract) and appends the Tree
(eager_mlx/trees/html.py) of every finished run to RUN_DIR/trees.jsonl, keyed by
request id (`eager-mlx eval --save-trace`). `write_tree_pages(RUN_DIR)` writes
RUN_DIR/trees/p<index>.html for every prompt of the run (sharded runs merged)
and RUN_DIR/trees/index.html linking them (`eager-mlx report --html`).
"""
from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from eager_mlx.answers import majority_vote
from eager_mlx.evaluation.evaluate import read_records
from eager_mlx.results import RunResult
from eager_mlx.evaluation.shards import load_merged, rank_dirs
from eager_mlx.trees.html import render_html, tree_from_record, tree_from_result

__all__ = ["TRACES", "TraceRecorder", "read_traces", "write_tree_pages"]

TRACES = "trees.jsonl"


class TraceRecorder:
    """Appends the Tree of each finished run to `path` (JSONL, fsynced): pass it as an evaluation's `on_run`."""

    def __init__(self, path: Path, tokenizer: Any = None):
        self.path = Path(path)
        self.tokenizer = tokenizer

    def __call__(self, result: RunResult) -> None:
        tree = tree_from_result(result, self.tokenizer, keep_text=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"request_id": result.request_id, "tree": tree.to_dict()}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_traces(run_dir: Path) -> dict[str, dict]:
    """Request id -> saved Tree dict of one run directory (a torn last line is skipped)."""
    return {e["request_id"]: e["tree"] for e in read_records(Path(run_dir) / TRACES)}


def _cell(text: Any, n: int = 80) -> str:
    s = "" if text is None else str(text)
    return html.escape(s if len(s) <= n else s[: n - 1] + "…")


def write_tree_pages(run_dir: Path) -> Path:
    """Write a branch-tree page per prompt and an index linking them; returns the index's path."""
    run_dir = Path(run_dir)
    manifest, records = load_merged(run_dir)
    ranks = rank_dirs(run_dir)
    traces = {None: read_traces(run_dir)} if not ranks else {i: read_traces(d) for i, d in enumerate(ranks)}
    out = run_dir / "trees"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for rec in records:
        trees = tree_from_record(rec, traces.get(rec.get("rank")))
        name = f"p{rec['index']}.html"
        title = f"prompt {rec['index']} ({rec.get('id', '')})"
        page = render_html(trees, title, question=rec.get("question"), gold=rec.get("gold"), back="index.html")
        (out / name).write_text(page, encoding="utf-8")
        seqs = rec.get("sequences", [])
        vote = majority_vote(s.get("answer") for s in seqs)
        correct = next((s.get("correct") for s in seqs if s.get("answer") == vote), None) if vote else False
        rows.append(f'<tr><td><a href="{name}">p{rec["index"]}</a></td><td>{_cell(rec.get("question"))}</td>'
                    f'<td>{_cell(rec.get("gold"), 20)}</td><td>{_cell(vote, 20)}</td>'
                    f'<td>{"✓" if correct else "✗"}</td><td>{len(seqs)}</td>'
                    f'<td>{rec.get("metrics", {}).get("generated_tokens", "")}</td></tr>')
    title = f"{run_dir.name}: {manifest.get('method', '')} on {manifest.get('dataset', {}).get('name', '')}"
    index = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
             "<style>body{font:14px -apple-system,Helvetica,Arial,sans-serif;margin:24px}"
             "table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}</style>"
             f"</head><body><h1>{html.escape(title)}</h1><table><tr><th>prompt</th><th>question</th><th>gold</th>"
             "<th>vote</th><th>correct</th><th>sequences</th><th>tokens</th></tr>" + "".join(rows)
             + "</table></body></html>\n")
    (out / "index.html").write_text(index, encoding="utf-8")
    return out / "index.html"

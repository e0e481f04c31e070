"""Branch-tree pages of an eval run: `write_tree_pages(RUN_DIR)` writes RUN_DIR/trees/p<index>.html for every
prompt of the run (sharded runs merged) and RUN_DIR/trees/index.html linking them (`eager-mlx report --html`),
from the records and the trees saved with `--save-trace` (eager_mlx/evaluation/traces.py).
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from eager_mlx.answers import majority_vote
from eager_mlx.evaluation.shards import load_merged, rank_dirs
from eager_mlx.evaluation.traces import read_traces
from eager_mlx.trees.html import page, render_html
from eager_mlx.trees.tree import tree_from_record

__all__ = ["write_tree_pages"]


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
        if "skipped" in rec:  # too long for the model's context: no runs, no page
            rows.append(f'<tr><td>p{rec["index"]}</td><td>{_cell(rec.get("question"))}</td>'
                        f'<td>{_cell(rec.get("gold"), 20)}</td><td colspan="4">skipped: {_cell(rec["skipped"])}</td></tr>')
            continue
        trees = tree_from_record(rec, traces.get(rec.get("rank")))
        name = f"p{rec['index']}.html"
        title = f"prompt {rec['index']} ({rec.get('id', '')})"
        text = render_html(trees, title, question=rec.get("question"), gold=rec.get("gold"), back="index.html")
        (out / name).write_text(text, encoding="utf-8")
        seqs = rec.get("sequences", [])
        vote = majority_vote(s.get("answer") for s in seqs)
        correct = next((s.get("correct") for s in seqs if s.get("answer") == vote), None) if vote else False
        rows.append(f'<tr><td><a href="{name}">p{rec["index"]}</a></td><td>{_cell(rec.get("question"))}</td>'
                    f'<td>{_cell(rec.get("gold"), 20)}</td><td>{_cell(vote, 20)}</td>'
                    f'<td>{"✓" if correct else "✗"}</td><td>{len(seqs)}</td>'
                    f'<td>{rec.get("metrics", {}).get("generated_tokens", "")}</td></tr>')
    title = f"{run_dir.name}: {manifest.get('method', '')} on {manifest.get('dataset', {}).get('name', '')}"
    index = page(title, f'<h1>{html.escape(title)}</h1><table class="index"><tr><th>prompt</th><th>question</th>'
                        "<th>gold</th><th>vote</th><th>correct</th><th>sequences</th><th>tokens</th></tr>"
                        + "".join(rows) + "</table>")
    (out / "index.html").write_text(index, encoding="utf-8")
    return out / "index.html"

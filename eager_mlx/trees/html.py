"""The branch-tree view: self-contained HTML pages (inline CSS and SVG, no network).

A page shows the branch tree (where each sequence forked from its parent, on which
token, at which entropy), each sequence's entropy trace with theta drawn in, the
answer each leaf reached and the vote. `render_tree_html(result, tokenizer)`
renders a RunResult (`eager-mlx solve --html`); `render_html` renders the trees of
eager_mlx/trees/tree.py; `page` is the skeleton every page shares.
"""
from __future__ import annotations

import html
from collections import Counter
from typing import Any, Optional

from eager_mlx.results import RunResult
from eager_mlx.trees.tree import Tree, TreeSequence, tree_from_result

__all__ = ["page", "render_html", "render_tree_html"]

_W, _LANE, _LEFT, _RIGHT = 760, 26, 60, 220  # tree drawing: plot width, lane height, margins
_CW, _CH = 760, 90  # entropy chart size
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


# ---- drawing -------------------------------------------------------------------------------------
def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _show(token: str) -> str:
    """A token for a label: control characters escaped, at most 12 characters."""
    return (token if token.isprintable() else repr(token)[1:-1])[:12]


def _order(tree: Tree) -> list[TreeSequence]:
    """Depth-first: each child right below its parent, earlier forks first."""
    kids: dict[Optional[int], list[TreeSequence]] = {}
    known = {s.index for s in tree.sequences}
    for s in tree.sequences:
        kids.setdefault(s.parent if s.parent in known else None, []).append(s)
    out: list[TreeSequence] = []

    def walk(parent: Optional[int]) -> None:
        for s in sorted(kids.get(parent, []), key=lambda s: (-(s.branch_step or 0), s.index)):
            out.append(s)
            walk(s.index)

    walk(None)
    return out


def _full_entropies(tree: Tree) -> dict[int, tuple[list[float], int]]:
    """Each sequence's whole trace (ancestors' part first) and where its own part starts."""
    by = {s.index: s for s in tree.sequences}
    memo: dict[int, tuple[list[float], int]] = {}

    def full(i: int, depth: int = 0) -> list[float]:
        if i in memo:
            return memo[i][0]
        s = by[i]
        start = s.branch_step or 0
        prefix = full(s.parent, depth + 1)[:start] if s.parent in by and depth < len(by) else []
        memo[i] = (prefix + list(s.entropies), len(prefix))
        return memo[i][0]

    for i in by:
        full(i)
    return memo


def _tree_svg(tree: Tree, order: list[TreeSequence], votes: Counter) -> str:
    length = max([s.length for s in order] + [1])
    lane = {s.index: i for i, s in enumerate(order)}

    def x(pos: float) -> float:
        return _LEFT + _W * pos / length

    def y(i: int) -> float:
        return 20 + _LANE * lane[i]

    height = 30 + _LANE * len(order)
    parts = [f'<svg class="tree" xmlns="http://www.w3.org/2000/svg" width="{_LEFT + _W + _RIGHT}" '
             f'height="{height}" role="img" aria-label="branch tree">']
    for k in range(0, 5):
        pos = round(length * k / 4)
        parts.append(f'<text class="axis" x="{x(pos):.1f}" y="{height - 2}">{pos}</text>')
    for s in order:
        color = _COLORS[s.index % len(_COLORS)]
        start = s.branch_step or 0
        x0, x1, yy = x(start), x(max(s.length, start)), y(s.index)
        parts.append(f'<g class="seq" data-seq="{s.index}" data-parent="{"" if s.parent is None else s.parent}">')
        parts.append(f'<title>sequence {s.index}: {s.length} tokens, {_e(s.finish_reason)}</title>')
        if s.parent is not None and s.parent in lane:
            parts.append(f'<path class="link" d="M{x0:.1f},{y(s.parent):.1f} V{yy:.1f}" stroke="{color}"/>')
        parts.append(f'<line class="branch" x1="{x0:.1f}" y1="{yy:.1f}" x2="{x1:.1f}" y2="{yy:.1f}" '
                     f'stroke="{color}"/>')
        parts.append(f'<text class="lane" x="4" y="{yy + 4:.1f}">#{s.index}</text>')
        if s.parent is not None:
            tip = f"forked from #{s.parent} at token {start}"
            if s.fork_token is not None:
                tip += f": took {s.fork_token!r}, the parent kept {s.parent_token!r}"
            if s.fork_entropy is not None:
                tip += f", entropy {s.fork_entropy:.2f} nats"
            parts.append(f'<circle class="fork" cx="{x0:.1f}" cy="{yy:.1f}" r="4" fill="{color}">'
                         f'<title>{_e(tip)}</title></circle>')
            label = "" if s.fork_token is None else f"“{_show(s.fork_token)}”"
            if s.fork_entropy is not None:
                label += f" H={s.fork_entropy:.2f}"
            parts.append(f'<text class="forklabel" x="{x0 + 6:.1f}" y="{yy - 5:.1f}">{_e(label)}</text>')
        win = s.answer is not None and s.answer == tree.answer
        mark = "" if s.correct is None else (" ✓" if s.correct else " ✗")
        ans = "no answer" if s.answer is None else f"→ {s.answer}"
        parts.append(f'<text class="leaf{" win" if win else ""}" x="{x1 + 6:.1f}" y="{yy + 4:.1f}">'
                     f'{_e(ans[:40])}{mark} <tspan class="why">({_e(s.finish_reason)})</tspan></text>')
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def _entropy_svg(s: TreeSequence, trace: list[float], own_from: int, theta: float, length: int,
                 top: float) -> str:
    def x(pos: float) -> float:
        return 40 + (_CW - 50) * pos / max(length, 1)

    def y(h: float) -> float:
        return 8 + (_CH - 24) * (1 - min(h, top) / top)

    color = _COLORS[s.index % len(_COLORS)]
    parts = [f'<svg class="entropy" data-seq="{s.index}" xmlns="http://www.w3.org/2000/svg" width="{_CW}" '
             f'height="{_CH}" role="img" aria-label="entropy of sequence {s.index}">',
             f'<line class="axis" x1="40" y1="{y(0):.1f}" x2="{_CW - 10}" y2="{y(0):.1f}"/>',
             f'<text class="axis" x="2" y="{y(top) + 8:.1f}">{top:.1f}</text>',
             f'<text class="axis" x="2" y="{y(0):.1f}">0</text>']
    inherited = trace[:own_from + 1]
    own = trace[own_from:]
    if len(inherited) > 1:
        pts = " ".join(f"{x(i):.1f},{y(h):.1f}" for i, h in enumerate(inherited))
        parts.append(f'<polyline class="inherited" points="{pts}"/>')
    if own:
        pts = " ".join(f"{x(own_from + i):.1f},{y(h):.1f}" for i, h in enumerate(own))
        parts.append(f'<polyline class="trace" points="{pts}" stroke="{color}"/>')
    if s.branch_step is not None and s.parent is not None:
        parts.append(f'<line class="forkmark" x1="{x(own_from):.1f}" y1="8" x2="{x(own_from):.1f}" '
                     f'y2="{y(0):.1f}"/>')
    parts.append(f'<line class="theta" x1="40" y1="{y(theta):.1f}" x2="{_CW - 10}" y2="{y(theta):.1f}">'
                 f'<title>theta = {theta:g} nats</title></line>')
    parts.append(f'<text class="thetalabel" x="{_CW - 60}" y="{y(theta) - 3:.1f}">θ={theta:g}</text></svg>')
    return "".join(parts)


def _tree_section(tree: Tree) -> str:
    order = _order(tree)
    votes = Counter(s.answer for s in tree.sequences if s.answer is not None)
    out = [f'<section class="run"><h2>{_e(tree.label or "branch tree")}</h2>',
           f'<p class="meta">{len(tree.sequences)} sequences, theta {tree.threshold:g} nats, voted answer: '
           f'<b class="vote">{_e(tree.answer if tree.answer is not None else "none")}</b></p>',
           _tree_svg(tree, order, votes)]
    rows = "".join(f'<tr class="{"win" if a == tree.answer else ""}"><td>{_e(a)}</td><td>{n}</td></tr>'
                   for a, n in votes.most_common())
    out.append('<h3>Vote</h3><table class="votes"><tr><th>answer</th><th>sequences</th></tr>'
               + (rows or '<tr><td colspan="2">no sequence reached an answer</td></tr>') + "</table>")
    traces = _full_entropies(tree)
    if any(s.entropies for s in tree.sequences):
        length = max(len(t) for t, _ in traces.values()) or 1
        top = max([tree.threshold * 1.25, 1.0] + [h for t, _ in traces.values() for h in t])
        out.append("<h3>Entropy per token (nats); the dashed red line is theta</h3>")
        for s in order:
            trace, own_from = traces[s.index]
            out.append(f'<div class="chart"><span class="lane">#{s.index}</span>'
                       f"{_entropy_svg(s, trace, own_from, tree.threshold, length, top)}</div>")
    else:
        out.append('<p class="meta">No entropy trace was saved for this run (eval with --save-trace).</p>')
    texts = [s for s in order if s.text]
    if texts:
        out.append("<h3>Texts</h3>")
        out += [f'<details><summary>#{s.index} → {_e(s.answer or "no answer")}</summary><pre>{_e(s.text)}</pre></details>'
                for s in texts]
    out.append("</section>")
    return "".join(out)


_CSS = """
body{font:14px/1.4 -apple-system,Helvetica,Arial,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 8px} h2{font-size:16px;margin:18px 0 4px} h3{font-size:14px;margin:14px 0 4px}
.meta{color:#555;margin:4px 0} .question{white-space:pre-wrap;background:#f6f6f6;padding:8px;border-radius:4px}
svg text{font:11px Menlo,monospace;fill:#333} text.axis{fill:#888} line.axis{stroke:#bbb}
.branch{stroke-width:3} .link{fill:none;stroke-width:1.5;stroke-dasharray:3 2}
.leaf.win{font-weight:bold;fill:#0a7d27} .why{fill:#999} .forklabel{fill:#555;font-size:10px}
.trace{fill:none;stroke-width:1.5} .inherited{fill:none;stroke:#bbb;stroke-width:1.2}
.theta{stroke:#d62728;stroke-width:1.5;stroke-dasharray:6 3} .thetalabel{fill:#d62728}
.forkmark{stroke:#999;stroke-dasharray:2 2} .chart{display:flex;align-items:center;gap:6px}
.votes{border-collapse:collapse} .votes td,.votes th{border:1px solid #ddd;padding:2px 10px;text-align:left}
.votes tr.win td{font-weight:bold;background:#e8f6ec} pre{white-space:pre-wrap;background:#f6f6f6;padding:8px}
table.index{border-collapse:collapse} .index td,.index th{border:1px solid #ddd;padding:3px 8px;text-align:left}
"""


def render_html(trees: list[Tree], title: str = "eager-mlx branch tree", *, question: Optional[str] = None,
                gold: Optional[str] = None, back: Optional[str] = None) -> str:
    """A whole page for one prompt: its question, then one section per run."""
    head = [f"<h1>{_e(title)}</h1>"]
    if back:
        head.append(f'<p><a href="{_e(back)}">← all prompts</a></p>')
    if question is not None:
        head.append(f'<div class="question">{_e(question)}</div>')
    if gold is not None:
        head.append(f'<p class="meta">gold answer: <b>{_e(gold)}</b></p>')
    return page(title, "".join(head) + "".join(_tree_section(t) for t in trees))


def page(title: str, body: str) -> str:
    """The one page skeleton (inline CSS, no network) around `body`, with `title` as the page title."""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{_CSS}</style></head><body>{body}</body></html>\n")


def render_tree_html(result: RunResult, tokenizer=None, title: str = "eager-mlx branch tree",
                     question: Optional[str] = None) -> str:
    """The page of one RunResult: tree, entropy traces with theta, leaves' answers and the vote."""
    return render_html([tree_from_result(result, tokenizer)], title, question=question)

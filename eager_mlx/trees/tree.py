"""The branch tree of a run as data: what the pages draw.

`tree_from_result` keeps what a page needs of a RunResult as a JSON-able `Tree`;
eval runs store one per run in RUN_DIR/trees.jsonl with `--save-trace`
(eager_mlx/evaluation/traces.py); `tree_from_record` rebuilds the trees of a
results.jsonl record (without a saved trace a tree has no fork tokens or
entropies, only its shape and answers).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from eager_mlx.answers import majority_vote
from eager_mlx.results import RunResult

__all__ = ["Tree", "TreeSequence", "tree_from_result", "tree_from_dict", "tree_from_record"]


@dataclass
class TreeSequence:
    """One sequence as the page draws it."""

    index: int
    parent: Optional[int]
    branch_step: Optional[int]  # position of its first own token (None: a root)
    length: int  # generated tokens, the inherited prefix included
    finish_reason: str
    answer: Optional[str]
    entropies: list[float] = field(default_factory=list)  # its own positions only (from branch_step, or 0)
    fork_token: Optional[str] = None  # the text of its first own token (top-2 at the fork)
    parent_token: Optional[str] = None  # what the parent took there (top-1)
    fork_entropy: Optional[float] = None
    text: Optional[str] = None
    correct: Optional[bool] = None


@dataclass
class Tree:
    """The sequences of one run, its theta and its vote."""

    threshold: float
    sequences: list[TreeSequence]
    answer: Optional[str]
    label: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def tree_from_dict(d: dict) -> Tree:
    """The inverse of `Tree.to_dict`."""
    return Tree(d["threshold"], [TreeSequence(**s) for s in d["sequences"]], d.get("answer"), d.get("label", ""))


def _piece(tokenizer, ids: list[int], pos: int) -> Optional[str]:
    if pos >= len(ids):
        return "<eos>"
    if tokenizer is None:
        return f"#{ids[pos]}"
    return tokenizer.decode([ids[pos]])


def tree_from_result(result: RunResult, tokenizer=None, label: str = "", keep_text: bool = True) -> Tree:
    """The Tree of a RunResult; `tokenizer` decodes the fork tokens (None: token ids)."""
    by_index = {s.index: s for s in result.sequences}
    seqs = []
    for s in result.sequences:
        start = s.branch_step or 0
        fork = parent_tok = None
        if s.parent is not None and s.branch_step is not None:
            fork = _piece(tokenizer, s.token_ids, start)
            parent = by_index.get(s.parent)
            parent_tok = _piece(tokenizer, parent.token_ids, start) if parent is not None else None
        seqs.append(TreeSequence(
            index=s.index, parent=s.parent, branch_step=s.branch_step, length=len(s.token_ids),
            finish_reason=s.finish_reason, answer=s.answer,
            entropies=[round(float(h), 3) for h in s.entropies[start:]],
            fork_token=fork, parent_token=parent_tok,
            fork_entropy=round(float(s.entropies[start]), 3) if fork is not None and start < len(s.entropies) else None,
            text=s.text if keep_text else None,
        ))
    return Tree(result.threshold, seqs, result.answer, label)


def tree_from_record(record: dict, traces: Optional[dict[str, dict]] = None) -> list[Tree]:
    """The trees of an eval record (one per run); `traces` maps request ids to saved Tree dicts."""
    trees = []
    for run in record.get("runs", []):
        rid = run["request_id"]
        seqs = [s for s in record.get("sequences", []) if s.get("run") == rid]
        label = (f"run {rid}: {'parallel' if run.get('parallel') else 'eager'}, theta {run.get('threshold', 0):g}, "
                 f"M {run.get('max_sequences')}, {run.get('generated_tokens')} tokens")
        saved = (traces or {}).get(rid)
        if saved is not None:
            tree = tree_from_dict(saved)
            correct = {s["index"]: s.get("correct") for s in seqs}
            for t in tree.sequences:
                t.correct = correct.get(t.index)
            tree.label = label
        else:
            tree = Tree(run.get("threshold", 0.0), [
                TreeSequence(index=s["index"], parent=s.get("parent"), branch_step=s.get("branch_step"),
                             length=s.get("tokens", 0), finish_reason=s.get("finish_reason", ""),
                             answer=s.get("answer"), text=s.get("text"), correct=s.get("correct"))
                for s in seqs], majority_vote([s.get("answer") for s in seqs]), label)
        trees.append(tree)
    return trees

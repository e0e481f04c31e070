"""The EAGer branch rule for one request, decision for decision as the reference.

Pure Python: the engine hands it the statistics of one step (already read back
from the device) and gets back which rows branch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from eager_mlx.config import EagerConfig

__all__ = ["BranchCandidate", "BranchPolicy"]


@dataclass
class BranchCandidate:
    """One row of the request at this step."""

    sequence: int  # sequence index (rows are considered in this order)
    entropy: float
    think_done: bool  # the row already generated the end-of-thinking marker


@dataclass
class BranchPolicy:
    """Decides branch points for one request across its steps.

    A row branches at step t when all hold: H_t > theta (with the dynamic rule, H_t >
    max(theta, the chosen percentile of the entropies of the request's earlier steps,
    every row's; theta alone at the first step)); the request has fewer than M
    sequences; the row has not generated the end-of-thinking marker; and fewer than
    `no_branch_window` consecutive steps have passed without a branch. A step's
    entropies join the history only after its decision: a threshold never contains
    the value tested against it. Rows are taken in sequence order, so the M cap goes
    to the oldest rows first.
    """

    config: EagerConfig
    num_sequences: int = 1  # running + finished
    steps_without_branch: int = 0
    closed: bool = False  # the no-branch window ran out: never branch again
    _history: np.ndarray = field(default_factory=lambda: np.empty(64))  # entropies of earlier steps
    _seen: int = 0  # filled part of _history

    @property
    def threshold(self) -> float:
        return self.config.threshold

    def effective_threshold(self) -> float:
        """theta, or with the dynamic rule max(theta, percentile of the earlier steps' entropies)."""
        cfg = self.config
        if not cfg.dynamic_threshold or self._seen == 0:
            return cfg.threshold
        return max(cfg.threshold, float(np.percentile(self._history[: self._seen], cfg.dynamic_percentile)))

    def decide(self, rows: list[BranchCandidate]) -> list[int]:
        """Return the sequence indices that branch at this step (counted against M).

        The caller reports the step's outcome with `end_step` (after any `veto`).
        """
        chosen = self._choose(rows)
        if self.config.dynamic_threshold:
            self._remember([r.entropy for r in rows])
        return chosen

    def _choose(self, rows: list[BranchCandidate]) -> list[int]:
        cfg = self.config
        if cfg.parallel or self.closed:
            return []
        if self.steps_without_branch >= cfg.no_branch_window:
            self.closed = True
            return []
        wanting = [r for r in sorted(rows, key=lambda r: r.sequence) if r.entropy > cfg.threshold and not r.think_done]
        if wanting and cfg.dynamic_threshold:
            # Only computed when some row is above theta: the effective threshold is never lower.
            theta = self.effective_threshold()
            wanting = [r for r in wanting if r.entropy > theta]
        chosen = []
        for r in wanting:
            if self.num_sequences >= cfg.max_sequences:
                break
            chosen.append(r.sequence)
            self.num_sequences += 1
        return chosen

    def _remember(self, entropies: list[float]) -> None:
        end = self._seen + len(entropies)
        if end > len(self._history):
            self._history = np.concatenate([self._history, np.empty(max(end, 2 * len(self._history)))])
        self._history[self._seen : end] = entropies
        self._seen = end

    def veto(self) -> None:
        """A chosen branch could not be made (no row or memory for it): it does not count."""
        self.num_sequences -= 1

    def end_step(self, branched: bool) -> None:
        """Count the step towards the no-branch window unless a branch was made."""
        self.steps_without_branch = 0 if branched else self.steps_without_branch + 1

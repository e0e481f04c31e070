"""Comparing a run with parallel sampling at equal cost: parallel's own samples at the run's generated tokens.

A run that generated T tokens over the problems is set against parallel sampling
with n = T / (parallel's tokens per sequence) samples per problem, drawn from the
parallel run's own M samples of each problem:

* Pass@k against parallel's unbiased pass@n (Chen et al.), per problem;
* cons@k against parallel's cons@n: the majority vote (ties: first answer seen) of
  an n-subset of its samples, averaged over every n-subset (exactly, or over 2,000
  random subsets when there are more);

with n between integers interpolated linearly, and n above M taken as M (then
parallel could not be measured at the run's cost, and the row says so). The
difference comes with a paired bootstrap 95% interval over problems (the same
resampled problems for both sides; n is held at its value on all problems).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import combinations
from math import comb, floor
from typing import Optional, Sequence

import numpy as np

from eager_mlx.answers import majority_vote, normalize_answer
from eager_mlx.evaluation.metrics import unbiased_pass_at_k

__all__ = ["EqualCost", "cons_at_n", "parallel_at", "equal_cost", "bootstrap_interval", "parallel_curve"]

_SUBSETS = 2000  # cons@n: random n-subsets per problem beyond this many
_RESAMPLES = 2000  # bootstrap resamples


def _vote_correct(answers: Sequence[Optional[str]], correct: Sequence[bool]) -> float:
    vote = majority_vote(answers)
    if vote is None:
        return 0.0
    key = normalize_answer(vote)
    return float(next(c for a, c in zip(answers, correct) if a is not None and normalize_answer(a) == key))


def cons_at_n(answers: Sequence[Optional[str]], correct: Sequence[bool], n: int, seed: int = 0) -> float:
    """Mean over n-subsets of the samples (kept in their order) of the subset's majority vote being correct."""
    m = len(answers)
    if not 1 <= n <= m:
        raise ValueError(f"cons@n needs 1 <= n <= {m}, got {n}")
    if comb(m, n) <= _SUBSETS:
        subsets = list(combinations(range(m), n))
    else:
        rng = random.Random(seed)
        subsets = [tuple(sorted(rng.sample(range(m), n))) for _ in range(_SUBSETS)]
    return sum(_vote_correct([answers[j] for j in s], [correct[j] for j in s]) for s in subsets) / len(subsets)


def parallel_at(answers: Sequence[Optional[str]], correct: Sequence[bool], n: float) -> tuple[float, float]:
    """(pass@n, cons@n) of one problem's parallel samples, n interpolated between integers (capped at M)."""
    m = len(correct)
    n = min(max(n, 1.0), float(m))
    lo, frac = floor(n), n - floor(n)
    c = sum(bool(x) for x in correct)

    def at(k: int) -> tuple[float, float]:
        return unbiased_pass_at_k(m, c, k), cons_at_n(answers, correct, k)

    a = at(lo)
    if frac == 0:
        return a
    b = at(lo + 1)
    return a[0] + frac * (b[0] - a[0]), a[1] + frac * (b[1] - a[1])


def bootstrap_interval(diffs: np.ndarray, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of paired per-problem differences, problems resampled with replacement."""
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(_RESAMPLES, len(diffs)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


@dataclass(frozen=True)
class EqualCost:
    """A run against parallel sampling's own samples at the run's generated tokens."""

    problems: int
    n: float  # parallel samples per problem at the run's tokens (uncapped; > M: parallel measured at M)
    tokens_ratio: float  # the run's tokens / parallel's
    pass_at_k: float
    parallel_pass: float  # parallel's pass@n
    pass_diff: float
    pass_ci: tuple[float, float]
    cons_at_k: float
    parallel_cons: float
    cons_diff: float
    cons_ci: tuple[float, float]
    max_n: int  # parallel's M

    @property
    def beyond_parallel(self) -> bool:
        """The run spent more than parallel's M samples: parallel is shown at M, not at equal cost."""
        return self.n > self.max_n


def _by_index(records: Sequence[dict]) -> dict[int, dict]:
    return {r["index"]: r for r in records if r.get("metrics")}


def equal_cost(run: Sequence[dict], parallel: Sequence[dict], seed: int = 0) -> EqualCost:
    """Compare `run`'s records with a parallel run's records of the same problems (results.jsonl records)."""
    runs, base = _by_index(run), _by_index(parallel)
    missing = sorted(set(runs) - set(base))
    if missing:
        raise ValueError(f"the parallel run has no record of problem {missing[0]} ({len(missing)} missing)")
    if not runs:
        raise ValueError("the run has no evaluated problems")
    idx = sorted(runs)
    m = min(len(base[i]["sequences"]) for i in idx)
    if m < 1 or any(len(base[i]["sequences"]) != m for i in idx):
        raise ValueError("the parallel run must have the same number of samples (M) for every problem")
    par_tokens = sum(base[i]["metrics"]["generated_tokens"] for i in idx)
    run_tokens = sum(runs[i]["metrics"]["generated_tokens"] for i in idx)
    n = m * run_tokens / par_tokens  # parallel samples per problem that cost what the run cost
    par = np.array([parallel_at([s["answer"] for s in base[i]["sequences"]],
                                [s["correct"] for s in base[i]["sequences"]], n) for i in idx])
    mine = np.array([[runs[i]["metrics"]["pass_at_k"], runs[i]["metrics"]["cons_at_k"]] for i in idx])
    diff = mine - par
    return EqualCost(problems=len(idx), n=n, tokens_ratio=run_tokens / par_tokens,
                     pass_at_k=float(mine[:, 0].mean()), parallel_pass=float(par[:, 0].mean()),
                     pass_diff=float(diff[:, 0].mean()), pass_ci=bootstrap_interval(diff[:, 0], seed),
                     cons_at_k=float(mine[:, 1].mean()), parallel_cons=float(par[:, 1].mean()),
                     cons_diff=float(diff[:, 1].mean()), cons_ci=bootstrap_interval(diff[:, 1], seed + 1), max_n=m)


def parallel_curve(parallel: Sequence[dict]) -> list[tuple[float, float, float]]:
    """Parallel sampling's frontier from its own samples: (tokens, pass@n, cons@n) for n = 1..M, where tokens
    is n / M of the parallel run's generated tokens."""
    base = list(_by_index(parallel).values())
    if not base:
        return []
    m = min(len(r["sequences"]) for r in base)
    tokens = sum(r["metrics"]["generated_tokens"] for r in base)
    out = []
    for n in range(1, m + 1):
        vals = np.array([parallel_at([s["answer"] for s in r["sequences"][:m]], [s["correct"] for s in r["sequences"][:m]],
                                     n) for r in base])
        out.append((tokens * n / m, float(vals[:, 0].mean()), float(vals[:, 1].mean())))
    return out

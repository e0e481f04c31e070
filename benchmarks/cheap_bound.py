"""What it takes to reach parallel sampling's full-M Pass@k for fewer tokens (issue 19's cheap target, measured).

Run:  python benchmarks/cheap_bound.py PARALLEL_RUN_DIR [...] [--budget 0.5] [--draws 400] [--seed 0]

From a parallel run's own samples (M per problem), no generation: how many of its tokens an allocation needs
before it holds every problem parallel solves, for
- the label oracle: each problem sampled until a sample is right (at most M); what `eager` with labels approaches;
- a perfect label-free ranking: one sample each, then all M to exactly the problems whose first sample is wrong
  and another is right (the best any single-sample signal could do);
- parallel sampling itself at the budget (the same n samples for every problem);
- real label-free rankings of the first sample: confidence (the vote's sequence confidence, lowest first), its
  length (longest first), no answer or cut at max tokens first, random. Each draw takes a random first sample
  per problem; the ranking gives the rest of a problem's samples in order.
For each ranking: Pass@k at `--budget` of parallel's tokens, the share of tokens it needs to reach parallel's
full-M Pass@k (every rescuable problem ranked in), and its AUROC for "rescuable" (first sample wrong, another
right) over problems. Means over draws. The rankings are read off the test set itself, so they are optimistic.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Callable

from eager_mlx.evaluation.equal_cost import parallel_at
from eager_mlx.evaluation.rundir import load_run

Sample = dict
Signal = Callable[[Sample], float]  # higher = more in need of further samples

SIGNALS: dict[str, Signal] = {
    "confidence (lowest first)": lambda s: -(s.get("confidence") if s.get("confidence") is not None else 0.0),
    "length (longest first)": lambda s: float(s["tokens"]),
    "no answer / cut, then confidence": lambda s: (
        (s["answer"] is None or s["finish_reason"] == "length") * 1e6 - (s.get("confidence") or 0.0)),
    "random": lambda s: 0.0,  # every score tied: the draw's random tie-break orders the problems
}


def problems(run_dir: Path) -> tuple[int, list[list[Sample]]]:
    """M and each problem's M samples (problems with fewer are left out: skipped or unfinished)."""
    manifest, records = load_run(run_dir)
    m = manifest["settings"]["scheduler"]["max_sequences"]
    return m, [r["sequences"][:m] for r in records if r.get("sequences") and len(r["sequences"]) >= m]


def label_oracle_tokens(samples: list[Sample]) -> float:
    """Expected tokens to sample until one is right (or all are), over the samples' orders: with c right ones, a
    wrong sample comes before all of them with probability 1/(c+1), a right one is the first right with 1/c."""
    c = sum(s["correct"] for s in samples)
    if c == 0:
        return float(sum(s["tokens"] for s in samples))
    return sum(s["tokens"] / c if s["correct"] else s["tokens"] / (c + 1) for s in samples)


def auroc(scores: list[float], positive: list[bool]) -> float:
    """P(a positive scores above a negative), ties half."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    if not pos or not neg:
        return float("nan")
    return sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))


def ranking(probs: list[list[Sample]], signal: Signal, budget: float, draws: int, rng: random.Random,
            total: int) -> tuple[float, float, float]:
    """(Pass@k at `budget`, token share to hold every rescuable problem, AUROC) of `signal`, means over draws."""
    at_budget = need = area = 0.0
    defined = 0  # draws with both rescuable and other problems (the AUROC's mean is over these)
    for _ in range(draws):
        first = [rng.randrange(len(p)) for p in probs]
        scored = []
        for i, (p, j) in enumerate(zip(probs, first)):
            s = p[j]
            rescuable = not s["correct"] and any(o["correct"] for o in p)
            scored.append((signal(s), rng.random(), i, rescuable))
        a = auroc([x[0] for x in scored], [x[3] for x in scored])
        if a == a:
            area, defined = area + a, defined + 1
        spent = sum(p[j]["tokens"] for p, j in zip(probs, first))
        solved = sum(p[j]["correct"] for p, j in zip(probs, first))
        left = sum(x[3] for x in scored)
        best = solved
        needed = spent if left == 0 else None
        for _score, _tie, i, rescuable in sorted(scored, reverse=True):
            extra = sum(s["tokens"] for k, s in enumerate(probs[i]) if k != first[i])
            spent += extra
            solved += rescuable
            left -= rescuable
            if spent <= budget * total:
                best = solved
            if left == 0 and needed is None:
                needed = spent
        at_budget += best / len(probs)
        need += needed / total
    return at_budget / draws, need / draws, area / defined if defined else float("nan")


def report(run_dir: Path, budget: float, draws: int, seed: int) -> str:
    m, probs = problems(run_dir)
    total = sum(s["tokens"] for p in probs for s in p)
    full = sum(any(s["correct"] for s in p) for p in probs) / len(probs)
    mean_first = sum(sum(s["tokens"] for s in p) / len(p) for p in probs)
    # Perfect ranking: expected over the first sample; rescuable problems then take their other samples.
    perfect = mean_first
    for p in probs:
        right = sum(s["correct"] for s in p)
        for s in p:
            if not s["correct"] and right:
                perfect += (sum(o["tokens"] for o in p) - s["tokens"]) / len(p)
    label = sum(label_oracle_tokens(p) for p in probs)
    uniform = sum(parallel_at([s["answer"] for s in p], [s["correct"] for s in p], budget * m)[0] for p in probs)
    lines = [f"{run_dir}: {len(probs)} problems, M = {m}, parallel's Pass@k {full:.3f} on {total} tokens; "
             f"never solved: {sum(not any(s['correct'] for s in p) for p in probs)}",
             "",
             f"| allocation | tokens to reach Pass@k {full:.3f} | Pass@k at {budget:.0%} of the tokens "
             "| AUROC (rescuable) |",
             "|---|---|---|---|",
             f"| label oracle (sample until right) | {label / total:.0%} | - | - |",
             f"| perfect label-free ranking of the first sample | {perfect / total:.0%} | - | 1.00 |",
             f"| parallel, n = {budget * m:g} samples each (unbiased pass@n) | 100% | {uniform / len(probs):.3f} | - |"]
    for name, signal in SIGNALS.items():
        at, need, area = ranking(probs, signal, budget, draws, random.Random(seed), total)
        lines.append(f"| {name} | {need:.0%} | {at:.3f} | {area:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+", help="parallel run directories")
    ap.add_argument("--budget", type=float, default=0.5, help="share of parallel's tokens (default 0.5)")
    ap.add_argument("--draws", type=int, default=400, help="random first samples per ranking (default 400)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for run_dir in args.runs:
        print(report(run_dir, args.budget, args.draws, args.seed))
        print()


if __name__ == "__main__":
    main()

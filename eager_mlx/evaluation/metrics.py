"""The paper's metrics, per prompt and per run: Pass@k, unbiased pass@k, cons@k, PR, #T, #S.

Definitions (eager-method.md):

* Pass@k: 1 if any of the prompt's sequences is correct (k = how many it got).
* Pass@1: the prompt's first sequence (sequence 0 of its first run) is correct:
  what one sample per prompt would have scored. (The unbiased pass@1 is PR.)
* unbiased pass@k for a fixed k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k),
  computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i); 1.0 when n - c < k; undefined
  (None, left out of the run's mean) when n < k.
* cons@k: the majority-voted answer (ties: first seen) is correct. Its
  correctness is that of the first sequence giving that answer.
* PR: fraction of the prompt's sequences that are correct, averaged over prompts.
* #T: generated tokens, shared prefixes counted once; #S: sequences per prompt.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from eager_mlx.answers import majority_vote, normalize_answer

__all__ = ["unbiased_pass_at_k", "PromptMetrics", "RunMetrics", "prompt_metrics", "run_metrics"]


def unbiased_pass_at_k(n: int, c: int, k: int) -> Optional[float]:
    """Chen et al.'s unbiased pass@k from n samples with c correct; None when n < k."""
    if k < 1 or c < 0 or c > n:
        raise ValueError(f"need k >= 1 and 0 <= c <= n, got n={n} c={c} k={k}")
    if n < k:
        return None
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


@dataclass
class PromptMetrics:
    """Metrics of one prompt over all its sequences (all runs)."""

    num_sequences: int
    num_correct: int
    pass_at_k: float
    pass_at_1: float
    cons_at_k: float
    majority_answer: Optional[str]
    pass_rate: float
    generated_tokens: int
    prompt_tokens: int
    wall_s: float
    tokens_per_s: float
    unbiased: dict[str, Optional[float]] = field(default_factory=dict)  # "pass@K" -> value


@dataclass
class RunMetrics:
    """Metrics of a run over its prompts (means over prompts unless named total)."""

    num_prompts: int
    pass_at_1: float
    pass_at_k: float
    cons_at_k: float
    pass_rate: float
    total_tokens: int  # #T over the run
    tokens_per_prompt: float
    total_sequences: int
    sequences_per_prompt: float  # #S
    prompt_tokens: int
    wall_s: float
    tokens_per_s: float
    unbiased: dict[str, Optional[float]] = field(default_factory=dict)  # mean over prompts with n >= k


def prompt_metrics(
    answers: Sequence[Optional[str]],
    correct: Sequence[bool],
    generated_tokens: int,
    prompt_tokens: int = 0,
    wall_s: float = 0.0,
    ks: Sequence[int] = (1,),
) -> PromptMetrics:
    """Metrics of one prompt; answers and correct are per sequence, first run's sequence 0 first."""
    if len(answers) != len(correct):
        raise ValueError("answers and correct must have one entry per sequence")
    n, c = len(correct), sum(bool(x) for x in correct)
    vote = majority_vote(answers)
    cons = 0.0
    if vote is not None:
        key = normalize_answer(vote)
        first = next(i for i, a in enumerate(answers) if a is not None and normalize_answer(a) == key)
        cons = float(bool(correct[first]))
    return PromptMetrics(
        num_sequences=n,
        num_correct=c,
        pass_at_k=float(c > 0),
        pass_at_1=float(bool(correct[0])) if n else 0.0,
        cons_at_k=cons,
        majority_answer=vote,
        pass_rate=c / n if n else 0.0,
        generated_tokens=generated_tokens,
        prompt_tokens=prompt_tokens,
        wall_s=wall_s,
        tokens_per_s=generated_tokens / wall_s if wall_s > 0 else 0.0,
        unbiased={f"pass@{k}": unbiased_pass_at_k(n, c, k) for k in ks} if n else {},
    )


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def run_metrics(prompts: Sequence[PromptMetrics], wall_s: float) -> RunMetrics:
    """Aggregate prompt metrics; wall_s is the run's real elapsed time (prompts overlap)."""
    total = sum(p.generated_tokens for p in prompts)
    seqs = sum(p.num_sequences for p in prompts)
    keys = sorted({k for p in prompts for k in p.unbiased}, key=lambda s: int(s.split("@")[1]))
    unbiased: dict[str, Optional[float]] = {}
    for k in keys:
        vals = [p.unbiased[k] for p in prompts if p.unbiased.get(k) is not None]
        unbiased[k] = _mean(vals) if vals else None
    return RunMetrics(
        num_prompts=len(prompts),
        pass_at_1=_mean([p.pass_at_1 for p in prompts]),
        pass_at_k=_mean([p.pass_at_k for p in prompts]),
        cons_at_k=_mean([p.cons_at_k for p in prompts]),
        pass_rate=_mean([p.pass_rate for p in prompts]),
        total_tokens=total,
        tokens_per_prompt=total / len(prompts) if prompts else 0.0,
        total_sequences=seqs,
        sequences_per_prompt=seqs / len(prompts) if prompts else 0.0,
        prompt_tokens=sum(p.prompt_tokens for p in prompts),
        wall_s=wall_s,
        tokens_per_s=total / wall_s if wall_s > 0 else 0.0,
        unbiased=unbiased,
    )

"""Sequence confidence (after DeepConf, Fu et al. 2025) and confidence-weighted voting.

DeepConf's token confidence is C_t = -(1/k) sum_{j<=k} log P_t(j), the negative
mean log-probability of the top-k candidate tokens at position t: large when
the distribution is peaked. Its *group confidence* is the mean of C_t over a
sliding window of n tokens (n = 2048), and a trace's *lowest group confidence*
is the minimum over its windows; DeepConf-online stops a trace as soon as its
current group confidence falls below a threshold set from warm-up traces.

The engine stores, per generated position, the top-K entropy H_t (nats, the
same peakedness of the top-K distribution that C_t measures) and the
temperature-1 log-probability of the sampled token. So here:

* token confidence c_t = -H_t (signal ``"entropy"``, the default; the only
  one the online monitor sees, since TokenEvents carry the entropy), or
  c_t = log p(sampled token) (signal ``"logprob"``, offline only);
* group confidence: mean of c_t over ``window`` consecutive positions
  (default 64: our sequences are hundreds of tokens, not DeepConf's tens of
  thousands);
* sequence confidence: the lowest group confidence; a sequence shorter than
  the window gets the mean over all its positions. Values are <= 0; higher is
  more confident.
* vote weight: exp(confidence), in (0, 1] (for ``"logprob"`` the geometric
  mean probability of the worst window). DeepConf weights votes by the
  confidence itself, which is positive in its definition; ours is not, hence
  the exponential (same order).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Optional, Sequence

from eager_mlx.answers import majority_vote, normalize_answer
from eager_mlx.results import NATURAL_FINISHES
from eager_mlx.settings import SettingError, setting, validate

__all__ = [
    "SIGNALS",
    "ConfidenceConfig",
    "token_confidences",
    "lowest_group_confidence",
    "sequence_confidence",
    "confidence_weight",
    "weighted_vote_record",
    "confidence_vote",
    "WindowConfidence",
    "NATURAL_FINISHES",
]

SIGNALS = ("entropy", "logprob")


@dataclass(frozen=True)
class ConfidenceConfig:
    """How confidence is measured, and whether low-confidence rows are pruned while they run."""

    window: int = setting(64, "Tokens per confidence group.", key="confidence_window", lo=1,
                          hi=2**20)
    signal: str = "entropy"  # "entropy" (c_t = -H_t) | "logprob" (c_t = log p of the sampled token)
    prune_percentile: Optional[float] = setting(
        None, "Prune a running row whose window confidence falls below this percentile of its prompt's finished "
              "sequences (off by default).", key="prune_confidence", lo=0, lo_open=True, hi=100, hi_open=True,
        optional=True)
    warmup: int = setting(4, "Finished sequences of a prompt needed before pruning starts.", key="prune_warmup", lo=1,
                          hi=1024)

    def validate(self) -> None:
        """Raise SettingError (a ValueError) naming the first bad value."""
        validate(self)
        if self.signal not in SIGNALS:
            raise SettingError(f"unknown confidence signal {self.signal!r}; choose one of {', '.join(SIGNALS)}")
        if self.prune_percentile is not None and self.signal != "entropy":
            raise SettingError("pruning needs the entropy signal (TokenEvents carry entropies only)")


def token_confidences(entropies: Sequence[float], logprobs: Sequence[float], signal: str = "entropy") -> list[float]:
    """c_t per position: -H_t (``"entropy"``) or the sampled token's log-probability (``"logprob"``)."""
    if signal == "entropy":
        return [-h for h in entropies]
    if signal == "logprob":
        return list(logprobs)
    raise ValueError(f"unknown confidence signal {signal!r}")


def lowest_group_confidence(values: Sequence[float], window: int) -> Optional[float]:
    """Minimum over windows of `window` consecutive values of their mean; the mean of all when shorter; None if empty."""
    n = len(values)
    if n == 0:
        return None
    if n <= window:
        return sum(values) / n
    total = sum(values[:window])
    lowest = total
    for i in range(window, n):
        total += values[i] - values[i - window]
        lowest = min(lowest, total)
    return lowest / window


def sequence_confidence(entropies: Sequence[float], logprobs: Sequence[float], config: ConfidenceConfig) -> Optional[float]:
    """A sequence's confidence: its lowest group confidence under `config` (None for an empty sequence)."""
    return lowest_group_confidence(token_confidences(entropies, logprobs, config.signal), config.window)


def confidence_weight(confidence: Optional[float]) -> float:
    """Vote weight of a sequence: exp(confidence), 0 for a sequence without one."""
    return 0.0 if confidence is None else math.exp(confidence)


def weighted_vote_record(
    answers: Sequence[Optional[str]], correct: Sequence[bool], confidences: Sequence[Optional[float]]
) -> dict:
    """``{"answer", "correct"}`` of the confidence-weighted vote; a sequence with confidence None does not vote.

    Correct is that of the first voter giving the winning answer (as cons@k in metrics.py).
    """
    voters = [i for i, c in enumerate(confidences) if c is not None]
    answer = majority_vote([answers[i] for i in voters], [confidence_weight(confidences[i]) for i in voters])
    ok = False
    if answer is not None:
        key = normalize_answer(answer)
        ok = bool(next(correct[i] for i in voters if answers[i] is not None and normalize_answer(answers[i]) == key))
    return {"answer": answer, "correct": ok}


def confidence_vote(result, config: Optional[ConfidenceConfig] = None) -> Optional[str]:
    """The confidence-weighted answer of a RunResult; pruned and aborted sequences do not vote."""
    config = config or ConfidenceConfig()
    voters = [s for s in result.sequences if s.finish_reason in NATURAL_FINISHES]
    weights = [confidence_weight(sequence_confidence(s.entropies, s.logprobs, config)) for s in voters]
    return majority_vote([s.answer for s in voters], weights)


class WindowConfidence:
    """Online group confidence of one row: push c_t per token; `lowest` matches lowest_group_confidence."""

    def __init__(self, window: int) -> None:
        self.window = window
        self._values: deque[float] = deque()
        self._sum = 0.0
        self._lowest_full: Optional[float] = None  # min over full windows so far

    def push(self, value: float) -> None:
        self._values.append(value)
        self._sum += value
        if len(self._values) > self.window:
            self._sum -= self._values.popleft()
        if len(self._values) == self.window:
            mean = self._sum / self.window
            self._lowest_full = mean if self._lowest_full is None else min(self._lowest_full, mean)

    @property
    def full(self) -> bool:
        """True once a whole window has been seen."""
        return self._lowest_full is not None

    @property
    def current(self) -> Optional[float]:
        """Mean of the last `window` values (all of them while fewer)."""
        return self._sum / len(self._values) if self._values else None

    @property
    def lowest(self) -> Optional[float]:
        """Lowest group confidence so far (the mean of all values before the first full window)."""
        return self._lowest_full if self._lowest_full is not None else self.current

    def copy(self) -> "WindowConfidence":
        other = WindowConfidence(self.window)
        other._values = deque(self._values)
        other._sum, other._lowest_full = self._sum, self._lowest_full
        return other

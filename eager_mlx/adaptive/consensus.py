"""Consensus early stop: has a prompt's set of finished answers agreed enough to stop sampling?

Two rules, pure functions of the answers in the order they were produced
(None = the sequence gave no answer):

* ``beta`` (Adaptive-Consistency, Aggarwal et al. 2023): with c1 >= c2 the
  counts of the two most common answers, the share p of the top answer among
  those two has the posterior Beta(c1 + 1, c2 + 1) under a uniform prior. Stop
  when P(p > 1/2) > ``confidence`` (0.95), i.e. when the leading answer is the
  true mode with that probability. For integer counts
  P(p > 1/2) = sum_{j=0}^{c1} C(n, j) / 2^n with n = c1 + c2 + 1 (exact).
  Sequences without an answer do not vote.
* ``window`` (ESC, Li et al. 2024): stop when the last ``window`` answers are
  all the same (and not None).

Answers are compared after ``normalize_answer`` (the same grouping as the vote).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from math import comb
from typing import Optional, Sequence

from eager_mlx.answers import normalize_answer
from eager_mlx.settings import SettingError, setting, validate

__all__ = ["RULES", "ConsensusConfig", "beta_mode_probability", "beta_stop", "window_stop", "consensus_reached"]

RULES = ("beta", "window")


@dataclass(frozen=True)
class ConsensusConfig:
    """Which rule stops a prompt, and its parameter."""

    rule: str = setting("beta", "Stop a prompt once its answers agree: beta (Adaptive-Consistency) or window (ESC).",
                        key="consensus", choices=RULES, optional=True)
    confidence: float = setting(0.95, "beta: stop when P(leading answer is the mode) exceeds this.",
                                key="consensus_confidence", lo=0.5, hi=1, hi_open=True)
    window: int = setting(4, "window: stop when this many last answers agree.", key="consensus_window", lo=2,
                          hi=1024)

    def validate(self) -> None:
        """Raise SettingError (a ValueError) naming the first bad value."""
        if self.rule is None:
            raise SettingError("consensus must be one of " + ", ".join(RULES) + ", got None")
        validate(self)


def _top2(answers: Sequence[Optional[str]]) -> tuple[int, int]:
    counts = Counter(normalize_answer(a) for a in answers if a is not None).most_common(2)
    c1 = counts[0][1] if counts else 0
    c2 = counts[1][1] if len(counts) > 1 else 0
    return c1, c2


def beta_mode_probability(c1: int, c2: int) -> float:
    """P(p > 1/2) for p ~ Beta(c1 + 1, c2 + 1): the top answer (count c1) beats the runner-up (c2)."""
    if c1 < 0 or c2 < 0:
        raise ValueError(f"counts must be >= 0, got {c1}, {c2}")
    n = c1 + c2 + 1
    return sum(comb(n, j) for j in range(c1 + 1)) / 2**n


def beta_stop(answers: Sequence[Optional[str]], confidence: float = 0.95) -> bool:
    """Adaptive-Consistency's rule: the leading answer is the mode with probability > confidence."""
    c1, c2 = _top2(answers)
    return c1 > 0 and beta_mode_probability(c1, c2) > confidence


def window_stop(answers: Sequence[Optional[str]], window: int = 4) -> bool:
    """ESC's rule: the last `window` answers exist and are all the same."""
    if window < 1 or len(answers) < window:
        return False
    last = answers[-window:]
    if any(a is None for a in last):
        return False
    return len({normalize_answer(a) for a in last}) == 1


def consensus_reached(answers: Sequence[Optional[str]], config: ConsensusConfig) -> bool:
    """Apply the configured rule to the answers so far."""
    if config.rule == "beta":
        return beta_stop(answers, config.confidence)
    if config.rule == "window":
        return window_stop(answers, config.window)
    raise ValueError(f"unknown consensus rule {config.rule!r}")

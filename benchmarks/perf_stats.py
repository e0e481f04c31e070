"""Paired ratios of interleaved repeats: the median and its spread, for the benchmark tables."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["Paired", "paired", "verdict"]

_BOOTSTRAP = 4000


@dataclass(frozen=True)
class Paired:
    """Summary of the ratios a_i / b_i of n paired measurements."""

    n: int
    median: float
    q1: float  # interquartile range of the paired ratios
    q3: float
    ci_lo: float  # 95% bootstrap confidence interval of the median ratio
    ci_hi: float
    ratios: tuple[float, ...]

    def iqr_text(self) -> str:
        return f"{self.median:.2f} [{self.q1:.2f}-{self.q3:.2f}]"

    def ci_text(self, percent: bool = False) -> str:
        """'median (lo to hi)' as ratios, or as percent change from 1 with `percent`."""
        if percent:
            m, lo, hi = ((x - 1) * 100 for x in (self.median, self.ci_lo, self.ci_hi))
            return f"{m:+.1f}% (95% CI {lo:+.1f}% to {hi:+.1f}%)"
        return f"{self.median:.3f} (95% CI {self.ci_lo:.3f} to {self.ci_hi:.3f})"


def paired(a: Sequence[float], b: Sequence[float], seed: int = 0) -> Paired:
    """Median, interquartile range and bootstrap 95% CI of the ratios a[i] / b[i]."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired() needs two equally long non-empty lists, got {len(a)} and {len(b)}")
    r = np.asarray(a, dtype=float) / np.asarray(b, dtype=float)
    q1, med, q3 = np.percentile(r, [25, 50, 75])
    rng = np.random.default_rng(seed)
    boot = np.median(rng.choice(r, size=(_BOOTSTRAP, len(r)), replace=True), axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return Paired(len(r), float(med), float(q1), float(q3), float(lo), float(hi), tuple(float(x) for x in r))


def verdict(p: Paired, target: float, at_least: bool = True) -> str:
    """'holds' when the whole interquartile range meets the target, 'median only' when just the median does."""
    meets = (lambda x: x >= target) if at_least else (lambda x: x <= target)
    if meets(p.q1) and meets(p.q3):
        return "holds"
    if meets(p.median):
        return "median only"
    return "no"

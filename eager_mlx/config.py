"""Configuration dataclasses for sampling and for EAGer branching."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SamplingConfig", "EagerConfig"]


@dataclass(frozen=True)
class SamplingConfig:
    """How a token is drawn. Temperature is applied before top-k/top-p/min-p (vLLM order)."""

    temperature: float = 0.6
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0

    def validate(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"min_p must be in [0, 1), got {self.min_p}")


@dataclass(frozen=True)
class EagerConfig:
    """One generation request: branch at high-entropy tokens (or sample M rows with `parallel`).

    Defaults follow the paper (eager-method.md): fixed threshold, M = 32, K = 20,
    a 1000-step no-branch window, temperature 0.6.
    """

    threshold: float = 2.0  # theta, in nats
    max_sequences: int = 32  # M: cap on sequences per prompt (running + finished)
    entropy_top_k: int = 20  # K: entropy over the renormalised top-K probabilities
    full_entropy: bool = False  # entropy over the whole vocabulary instead of top-K
    dynamic_threshold: bool = False  # reference-code rule: max(theta, p99 of the prompt's earlier entropies)
    dynamic_percentile: float = 99.0
    no_branch_window: int = 1000  # stop branching after this many steps without a branch
    parallel: bool = False  # baseline: M independent rows, no branching
    max_tokens: int = 2048  # per sequence, generated tokens
    stop: tuple[str, ...] = ()
    think_end: str | None = "</think>"  # branching stops in a row once this marker was generated
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def validate(self) -> None:
        """Raise ValueError naming the first bad value."""
        if self.threshold < 0:
            raise ValueError(f"threshold (theta) must be >= 0, got {self.threshold}")
        if self.max_sequences < 1:
            raise ValueError(f"max_sequences (M) must be >= 1, got {self.max_sequences}")
        if self.entropy_top_k < 2:
            raise ValueError(f"entropy_top_k (K) must be >= 2, got {self.entropy_top_k}")
        if not 0 < self.dynamic_percentile <= 100:
            raise ValueError(f"dynamic_percentile must be in (0, 100], got {self.dynamic_percentile}")
        if self.no_branch_window < 1:
            raise ValueError(f"no_branch_window must be >= 1, got {self.no_branch_window}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        self.sampling.validate()

"""Configuration dataclasses for sampling, EAGer branching and the engine.

Each user-facing field is declared once with `settings.setting` (help, range, CLI
flag): the CLI options, the server's request parsing and docs/settings.md come
from these declarations. The defaults are the project's one set, chosen for a
laptop (M = 8, 1024 tokens); the paper's are M = 32 and 32,768 tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .settings import setting, validate

__all__ = ["BRANCH_RULES", "SamplingConfig", "EagerConfig", "EngineConfig", "MAX_ROWS", "MAX_TOKENS", "MAX_TOP_K"]

BRANCH_RULES = ("top2", "sample", "keep")
# Every integer setting is bounded, so no value can overflow the graph's int32 arrays or grow without end.
MAX_ROWS = 1024  # rows per pass, and M (the paper's M is 32)
MAX_TOKENS = 2**20  # tokens per sequence (a model's context stops a row earlier)
MAX_TOP_K = 2**20  # more than any vocabulary


@dataclass(frozen=True)
class SamplingConfig:
    """How a token is drawn. Temperature is applied before top-k/top-p/min-p (vLLM order)."""

    temperature: float = setting(0.6, "Sampling temperature (0: greedy).", flags=("--temperature", "--temp"),
                                 lo=0, preset=True)
    top_p: float = setting(1.0, "Nucleus sampling: keep the most probable tokens holding this mass.", lo=0,
                           lo_open=True, hi=1, preset=True)
    top_k: int = setting(0, "Sample among the k most probable tokens (0: off; more than the vocabulary: no cut).",
                         lo=0, hi=MAX_TOP_K)
    min_p: float = setting(0.0, "Drop tokens below min_p times the top token's probability (0: off).", lo=0, hi=1,
                           hi_open=True)

    def validate(self) -> None:
        """Raise SettingError (a ValueError) naming the first bad value."""
        validate(self)


@dataclass(frozen=True)
class EagerConfig:
    """One generation request: branch at high-entropy tokens (or sample M rows with `parallel`).

    The branch rule follows the paper (eager-method.md): fixed threshold, K = 20,
    a 1000-step no-branch window, temperature 0.6; M and max_tokens are smaller
    by default (see the module docstring).
    """

    threshold: float = setting(2.0, "Entropy threshold theta in nats: a row branches where its entropy is above it.",
                               flags=("--threshold", "-t"), lo=0, preset=True)
    max_sequences: int = setting(8, "M: cap on sequences per prompt (running + finished).",
                                 flags=("--max-sequences", "-M"), lo=1, hi=MAX_ROWS)
    entropy_top_k: int = setting(20, "K: entropy over the renormalised K most probable tokens.",
                                 flags=("--entropy-top-k", "--entropy-k"), lo=2, hi=MAX_TOP_K)
    full_entropy: bool = setting(False, "Entropy over the whole vocabulary instead of the top K.")
    dynamic_threshold: bool = setting(False, "Reference-code rule: theta_eff = max(theta, a percentile of the "
                                             "prompt's entropies at earlier steps).")
    dynamic_percentile: float = setting(99.0, "Percentile of the dynamic threshold.", lo=0, lo_open=True, hi=100)
    no_branch_window: int = setting(1000, "Stop branching after this many steps without a branch.", lo=1,
                                    hi=MAX_TOKENS)
    branch_rule: str = setting("top2", "Tokens at a branch: top2 (the paper: parent top-1, child top-2), sample "
                                       "(parent top-1, child sampled without it), keep (parent keeps its sample, "
                                       "child sampled without it).", choices=BRANCH_RULES, preset=True)
    parallel: bool = setting(False, "Baseline: M independent samples, no branching.")
    max_tokens: int = setting(1024, "Tokens per sequence.", lo=1, hi=MAX_TOKENS)
    stop: tuple[str, ...] = setting((), "Stop string (repeatable).")
    think_end: Optional[str] = setting("</think>", "End-of-thinking marker: a row stops branching once it wrote it.",
                                       preset=True, optional=True)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def validate(self) -> None:
        """Raise SettingError (a ValueError) naming the first bad value."""
        validate(self)
        self.sampling.validate()


@dataclass(frozen=True)
class EngineConfig:
    """How an engine runs: rows per forward pass, the seed, a cap on KV memory, the prefix cache."""

    max_rows: int = setting(16, "Rows decoded per forward pass, over all requests.", lo=1, hi=MAX_ROWS)
    seed: int = setting(55, "Random seed (a 64-bit signed integer).", lo=-(2**63), hi=2**63 - 1)
    max_kv_memory: Optional[int] = setting(None, "Cap on KV cache bytes (e.g. 2GB): forks past it are skipped; the "
                                                 "prefix cache keeps what is left (1 GiB when unset).",
                                           lo=1, hi=2**50, optional=True, size=True)
    no_prefix_cache: bool = setting(False, "Prefill every prompt whole: keep no prompt segments (system prompt, "
                                           "few-shot exemplars, earlier chat turns) for later requests. Results "
                                           "are the same either way.")

    def validate(self) -> None:
        """Raise SettingError (a ValueError) naming the first bad value."""
        validate(self)

"""Command-line options for consensus early stop and confidence (shared by eval and solve)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import click

from eager_mlx.adaptive.confidence import ConfidenceConfig
from eager_mlx.adaptive.consensus import RULES, ConsensusConfig

__all__ = ["BeyondOptions", "beyond_options", "beyond_from"]


@dataclass(frozen=True)
class BeyondOptions:
    """What the options asked for."""

    consensus: Optional[ConsensusConfig] = None
    consensus_abort: bool = False
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)
    confidence_vote: bool = False

    @property
    def online(self) -> bool:
        """True when an OnlineMonitor must watch the engine (it then needs TokenEvents)."""
        return self.consensus_abort or self.confidence.prune_percentile is not None


_OPTIONS = (
    click.option("--consensus", type=click.Choice(RULES), default=None,
                 help="Stop a prompt once its answers agree: beta (Adaptive-Consistency) or window (ESC)."),
    click.option("--consensus-confidence", type=float, default=0.95, show_default=True,
                 help="beta: stop when P(leading answer is the mode) exceeds this."),
    click.option("--consensus-window", type=int, default=4, show_default=True,
                 help="window: stop when this many last answers agree."),
    click.option("--consensus-abort", is_flag=True,
                 help="Also abort the prompt's run in flight as soon as its answers agree."),
    click.option("--confidence-vote", is_flag=True, help="Vote with confidence weights (DeepConf-style)."),
    click.option("--prune-confidence", type=float, default=None, metavar="P",
                 help="Prune a running row whose window confidence falls below the P-th percentile of its prompt's "
                      "finished sequences."),
    click.option("--confidence-window", type=int, default=64, show_default=True, help="Tokens per confidence group."),
    click.option("--prune-warmup", type=int, default=4, show_default=True,
                 help="Finished sequences of a prompt needed before pruning starts."),
)


def beyond_options(f: Callable) -> Callable:
    """Add the consensus / confidence options to a click command (they arrive as keyword arguments)."""
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def beyond_from(kw: dict[str, Any], *, abort_implied: bool = False) -> BeyondOptions:
    """BeyondOptions from the options' values; ClickException on bad values.

    `abort_implied`: a consensus rule always aborts the run (solve has no later runs to skip).
    """
    consensus = None
    if kw["consensus"] is not None:
        consensus = ConsensusConfig(kw["consensus"], kw["consensus_confidence"], kw["consensus_window"])
    elif kw["consensus_abort"]:
        raise click.ClickException("--consensus-abort needs --consensus beta|window")
    confidence = ConfidenceConfig(window=kw["confidence_window"], prune_percentile=kw["prune_confidence"],
                                  warmup=kw["prune_warmup"])
    try:
        confidence.validate()
        if consensus is not None:
            consensus.validate()
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    abort = consensus is not None and (kw["consensus_abort"] or abort_implied)
    return BeyondOptions(consensus, abort, confidence, kw["confidence_vote"])

"""The adaptive extras a run may use: consensus stop, confidence pruning and the confidence vote."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from eager_mlx.settings import SettingError, build, setting, validate

from .confidence import ConfidenceConfig
from .consensus import ConsensusConfig

__all__ = ["AdaptiveOptions"]


@dataclass(frozen=True)
class AdaptiveOptions:
    """What a run asked for beyond the paper (docs/beyond.md); None / False: off."""

    consensus: Optional[ConsensusConfig] = None
    consensus_abort: bool = setting(False, "Also abort a prompt's run in flight as soon as its answers agree.")
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)
    confidence_vote: bool = setting(False, "Vote with confidence weights (DeepConf-style).")

    @classmethod
    def from_settings(cls, values: dict[str, Any], *, abort_implied: bool = False) -> "AdaptiveOptions":
        """From flat setting values (`consensus`, `consensus_window`, `prune_confidence`, ...).

        `abort_implied`: a consensus rule always aborts the run (one run: nothing later to skip).
        """
        consensus = build(ConsensusConfig, values) if values.get("consensus") is not None else None
        if values.get("consensus_abort") and consensus is None:
            raise SettingError("consensus_abort needs a consensus rule (consensus: beta or window)")
        options = build(cls, values, consensus=consensus, confidence=build(ConfidenceConfig, values))
        if abort_implied and consensus is not None:
            options = cls(consensus, True, options.confidence, options.confidence_vote)
        options.validate()
        return options

    @property
    def online(self) -> bool:
        """True when an OnlineMonitor must watch the engine (it then needs TokenEvents)."""
        return self.consensus_abort or self.confidence.prune_percentile is not None

    def validate(self) -> None:
        """Raise SettingError (a ValueError) naming the first bad value."""
        validate(self)
        self.confidence.validate()
        if self.consensus is not None:
            self.consensus.validate()

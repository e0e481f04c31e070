"""Online control of running rows, outside the engine: confidence pruning and consensus abort.

``OnlineMonitor`` reads the engine's events (the engine must emit TokenEvents)
and keeps, per running row, its text and its sliding-window confidence
(eager_mlx/adaptive/confidence.py; a branch child starts from a copy of its parent's).
Per prompt (several runs may share one, via ``prompt_of``) it keeps the
answers and confidences of the sequences that finished by themselves (eos,
stop, length), in finish order. After each batch of events it may act:

* pruning (DeepConf-online style, ``ConfidenceConfig.prune_percentile`` = P):
  once the prompt has ``warmup`` finished sequences, the threshold is the P-th
  percentile of their confidences; a running row whose current window (a full
  one) has a lower mean is stopped with ``engine.finish_sequence(rid, seq,
  "pruned")``. Its row is freed at once; it still counts as one of the
  request's M sequences (so it makes no room for a new branch), and its
  tokens so far count.
* consensus abort (``ConsensusConfig``): when the prompt's answers satisfy the
  rule, its runs in flight are stopped with ``engine.abort`` (their running
  rows end "aborted") and ``agreed(request_id)`` turns true, which the caller
  reports to the scheduler (``RunOutcome.consensus``).

Pruned and aborted sequences do not vote and do not set the threshold. The
EOS position has no TokenEvent, so a row's online confidence leaves it out
(the offline ``sequence_confidence`` includes it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Hashable, Optional

import numpy as np

from eager_mlx.answers import extract_boxed
from eager_mlx.adaptive.confidence import NATURAL_FINISHES, ConfidenceConfig, WindowConfidence
from eager_mlx.adaptive.consensus import ConsensusConfig, consensus_reached
from eager_mlx.engine.protocol import EngineLike
from eager_mlx.results import BranchEvent, Event, RunFinished, RunPreempted, SequenceFinished, TokenEvent

__all__ = ["OnlineMonitor"]


@dataclass
class _Row:
    window: WindowConfidence
    text: str = ""


@dataclass
class _PromptState:
    answers: list[tuple[str, Optional[str]]] = field(default_factory=list)  # (request id, answer)
    confidences: list[tuple[str, float]] = field(default_factory=list)  # (request id, lowest group confidence)
    runs: set[str] = field(default_factory=set)  # request ids in flight

    def forget(self, request_id: str) -> None:
        """Drop what a preempted run contributed: it runs again and contributes it again."""
        self.answers = [a for a in self.answers if a[0] != request_id]
        self.confidences = [c for c in self.confidences if c[0] != request_id]


class OnlineMonitor:
    """Prunes low-confidence rows and aborts agreeing prompts' runs, from the engine's events."""

    def __init__(
        self,
        engine: EngineLike,
        *,
        confidence: Optional[ConfidenceConfig] = None,
        consensus: Optional[ConsensusConfig] = None,
        prompt_of: Callable[[str], Hashable] = str,
        extract: Callable[[str], Optional[str]] = extract_boxed,
    ) -> None:
        """`prompt_of(request_id)` groups runs by prompt; `extract(text)` gives a finished row's answer."""
        if not getattr(engine, "token_events", True):
            raise ValueError("online pruning / consensus abort need an engine built with token_events=True")
        self.engine = engine
        self.confidence = confidence or ConfidenceConfig()
        self.consensus = consensus
        self.prompt_of = prompt_of
        self.extract = extract
        self.pruned = 0  # rows pruned so far
        self._rows: dict[tuple[str, int], _Row] = {}
        self._prompts: dict[Hashable, _PromptState] = {}
        self._agreed: set[str] = set()

    @property
    def prunes(self) -> bool:
        return self.confidence.prune_percentile is not None

    def agreed(self, request_id: str) -> bool:
        """True if its prompt reached consensus while this run was going (its other rows were then aborted)."""
        return request_id in self._agreed

    def threshold(self, prompt: Hashable) -> Optional[float]:
        """The prompt's pruning threshold now (None: pruning off or still warming up)."""
        st = self._prompts.get(prompt)
        if not self.prunes or st is None or len(st.confidences) < self.confidence.warmup:
            return None
        return float(np.percentile([c for _, c in st.confidences], self.confidence.prune_percentile))

    def feed(self, events: list[Event]) -> list[Event]:
        """Track `events`, then prune / abort as configured; returns the events those actions produced."""
        to_prune: list[tuple[str, int]] = []
        to_abort: set[Hashable] = set()
        for ev in events:
            self._track(ev, to_prune, to_abort)
        extra: list[Event] = []
        for prompt in to_abort:
            for rid in sorted(self._prompts[prompt].runs):
                self._agreed.add(rid)
                extra += self.engine.abort(rid)
        for rid, seq in to_prune:
            if (rid, seq) in self._rows and rid not in self._agreed:
                self.pruned += 1
                extra += self.engine.finish_sequence(rid, seq, "pruned")
        for ev in extra:
            self._track(ev, [], set())
        return extra

    def _track(self, ev: Event, to_prune: list, to_abort: set) -> None:
        if isinstance(ev, TokenEvent):
            key = (ev.request_id, ev.sequence)
            row = self._rows.get(key)
            if row is None:
                row = self._rows[key] = _Row(WindowConfidence(self.confidence.window))
                self._prompts.setdefault(self.prompt_of(ev.request_id), _PromptState()).runs.add(ev.request_id)
            row.text += ev.text
            row.window.push(-ev.entropy)
            if self.prunes and row.window.full:
                thr = self.threshold(self.prompt_of(ev.request_id))
                if thr is not None and row.window.current < thr:
                    to_prune.append(key)
        elif isinstance(ev, BranchEvent):
            parent = self._rows.get((ev.request_id, ev.parent))
            if parent is not None:
                self._rows[(ev.request_id, ev.child)] = _Row(parent.window.copy(), parent.text)
        elif isinstance(ev, SequenceFinished):
            row = self._rows.pop((ev.request_id, ev.sequence), None)
            if row is None or ev.finish_reason not in NATURAL_FINISHES:
                return
            prompt = self.prompt_of(ev.request_id)
            st = self._prompts.setdefault(prompt, _PromptState())
            if row.window.lowest is not None:
                st.confidences.append((ev.request_id, row.window.lowest))
            st.answers.append((ev.request_id, self.extract(row.text)))
            if self.consensus is not None and ev.request_id not in self._agreed:
                if consensus_reached([a for _, a in st.answers], self.consensus):
                    self._agreed.add(ev.request_id)  # even if this was the run's last row
                    to_abort.add(prompt)
        elif isinstance(ev, (RunFinished, RunPreempted)):
            st = self._prompts.get(self.prompt_of(ev.request_id), _PromptState())
            if isinstance(ev, RunPreempted):
                st.forget(ev.request_id)
            else:
                st.runs.discard(ev.request_id)
            for key in [k for k in self._rows if k[0] == ev.request_id]:
                del self._rows[key]

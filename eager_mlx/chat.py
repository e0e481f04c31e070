"""A multi-turn conversation over the engine (`eager-mlx chat`): each turn branches like `solve`, and the
voted sequence's text becomes the assistant's message.

Each turn sends the whole conversation (system message, earlier turns, the new message) through
`stream_solve`, so the engine prefills it again. `Chat._generate` is the one place that does it: a cache
that keeps the previous turns' KV in the engine (a cross-request prefix cache) slots in there, behind the
same events.

Which text is kept: the answers are the sequences' last ``\\boxed{}`` (as `solve` shows them), the vote is
the majority vote (`eager_mlx.answers`; the confidence-weighted vote with `confidence_vote`), and the reply
is the text of the first sequence, by index, that holds the voted answer; when no sequence has an answer
(most chat turns), sequence 0, the one that was streamed. A turn stopped by `cancel` keeps what sequence 0
had written, marked `stopped`.
"""
from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from .adaptive.options import AdaptiveOptions
from .answers import majority_vote, voted_index
from .api import stream_solve
from .config import EagerConfig, EngineConfig
from .prompts import PromptError
from .results import Event, RunFinished, RunResult

__all__ = ["Turn", "Chat"]


@dataclass
class Turn:
    """One exchange, and how the reply was chosen."""

    user: str
    reply: str  # the text kept in the conversation
    sequence: int  # the sequence it came from
    sequences: int
    branch_points: int
    answers: list[Optional[str]]  # each sequence's, by index
    vote: Optional[str]
    prompt_tokens: int  # the whole conversation, sent again this turn
    generated_tokens: int
    stopped: bool = False  # cancelled: the reply is what sequence 0 had written


@dataclass
class Chat:
    """A conversation with one loaded model under one request config (`eager_mlx.load`, `config_for`)."""

    loaded: Any
    config: EagerConfig
    system: Optional[str] = None
    seed: int = EngineConfig.seed
    max_kv_memory: Optional[int] = None
    options: AdaptiveOptions = field(default_factory=AdaptiveOptions)
    messages: list[dict] = field(default_factory=list)  # user and assistant messages, in order
    turns: list[Turn] = field(default_factory=list)

    def ask(self, text: str, cancel: Optional[threading.Event] = None) -> Iterator[Event]:
        """Stream one turn (TokenEvent, BranchEvent, SequenceFinished, then RunFinished); when it has finished,
        the turn is in `turns` and its reply in `messages`. Setting `cancel` stops it within one step."""
        if not text.strip():
            raise PromptError("the message is empty")
        system = [{"role": "system", "content": self.system}] if self.system else []
        conversation = system + self.messages + [{"role": "user", "content": text}]
        for event in self._generate(conversation, cancel):
            yield event
            if isinstance(event, RunFinished):
                self._keep(text, event.result, stopped=cancel is not None and cancel.is_set())

    def _generate(self, conversation: list[dict], cancel: Optional[threading.Event]) -> Iterator[Event]:
        # The whole conversation every turn; a prefix cache of the previous turns' KV would go here.
        return stream_solve(self.loaded, conversation, self.config, seed=self.seed, max_kv_memory=self.max_kv_memory,
                            cancel=cancel, confidence=self.options.confidence, consensus=self.options.consensus)

    def _keep(self, text: str, result: RunResult, stopped: bool) -> None:
        seqs = sorted(result.sequences, key=lambda s: s.index)
        answers = [s.answer for s in seqs]
        vote = None if stopped else self._vote(result, answers)
        k = voted_index(answers, vote) if vote is not None else None
        k = 0 if k is None else k
        reply = seqs[k].text if seqs else ""  # no sequence: stopped before the first pass
        turn = Turn(text, reply, seqs[k].index if seqs else 0, len(seqs), result.branch_points, answers, vote, result.prompt_tokens,
                    result.generated_tokens, stopped)
        self.turns.append(turn)
        self.messages += [{"role": "user", "content": text}, {"role": "assistant", "content": turn.reply}]

    def _vote(self, result: RunResult, answers: list[Optional[str]]) -> Optional[str]:
        if self.options.confidence_vote:
            from .adaptive.confidence import confidence_vote

            return confidence_vote(result, self.options.confidence)
        return majority_vote(answers)

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.messages.clear()
        self.turns.clear()

    def to_dict(self) -> dict:
        """The conversation as JSON-ready data: model, settings, messages (system first) and turns."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return {"model": getattr(self.loaded, "name", ""), "seed": self.seed,
                "config": dataclasses.asdict(self.config), "messages": system + self.messages,
                "turns": [dataclasses.asdict(t) for t in self.turns]}

    def save(self, path: Path) -> None:
        """Write `to_dict()` to `path` as JSON (OSError when it cannot be written)."""
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

"""Result and event dataclasses produced by the engine."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional, Union

__all__ = [
    "FinishReason",
    "SequenceResult",
    "RunResult",
    "TokenEvent",
    "BranchEvent",
    "SequenceFinished",
    "RunFinished",
    "RunPreempted",
    "Event",
]


class FinishReason(str, Enum):
    """Why a sequence ended; a str, so it compares equal to and serialises as its value."""

    EOS = "eos"  # the model's end-of-sequence token
    STOP = "stop"  # a stop string
    LENGTH = "length"  # max_tokens or the model's context
    ABORTED = "aborted"  # its request was aborted
    PRUNED = "pruned"  # stopped for low confidence (eager_mlx/adaptive/online.py)
    NONFINITE = "nonfinite"  # the model's logits were NaN or infinite at this step (its numerics failed)
    PREEMPTED = "preempted"  # engine-internal: the row was given up and its request runs again (never in a result)

    def __str__(self) -> str:
        return self.value

    @property
    def natural(self) -> bool:
        """Ended by itself (not pruned or aborted): only these sequences vote."""
        return self in NATURAL_FINISHES


NATURAL_FINISHES = (FinishReason.EOS, FinishReason.STOP, FinishReason.LENGTH)


@dataclass
class SequenceResult:
    """One finished sequence (a row) of a request."""

    index: int  # 0 is the request's first row; children are numbered in branch order
    token_ids: list[int]  # generated tokens only, the inherited prefix included
    text: str
    finish_reason: str  # a FinishReason
    parent: Optional[int]  # index of the sequence it branched from, None for row 0 / parallel rows
    branch_step: Optional[int]  # position (in token_ids) of its first own token, None if no parent
    entropies: list[float]  # token entropy (nats) at each generated position
    logprobs: list[float]  # log-probability (temperature 1) of each generated token
    answer: Optional[str] = None  # last \boxed{...}, if any


@dataclass
class RunResult:
    """Everything one request produced."""

    request_id: str
    sequences: list[SequenceResult]
    prompt_tokens: int
    generated_tokens: int  # real tokens, shared prefixes counted once
    answer: Optional[str]  # majority vote over the sequences' answers
    threshold: float  # the theta it ran with
    elapsed_s: float
    branch_points: int = 0
    info: dict = field(default_factory=dict)

    @property
    def num_sequences(self) -> int:
        return len(self.sequences)


@dataclass
class TokenEvent:
    request_id: str
    sequence: int
    token: int
    text: str  # the text this token added (may be "" while a UTF-8 character is incomplete)
    entropy: float
    logprob: Optional[float] = None  # temperature-1 log-probability of the token


@dataclass
class BranchEvent:
    request_id: str
    parent: int
    child: int
    step: int  # position in the parent's generated tokens where the two differ
    entropy: float
    parent_token: int  # top-1, kept by the parent
    child_token: int  # top-2, taken by the child


@dataclass
class SequenceFinished:
    request_id: str
    sequence: int
    finish_reason: str


@dataclass
class RunFinished:
    request_id: str
    result: RunResult


@dataclass
class RunPreempted:
    """The engine took the request's rows for an older request's branch; it runs again from its prompt
    later, with the same randomness, so its result does not change. Events seen for it so far are void."""

    request_id: str
    tokens: int  # tokens it had generated: work that will be done again


Event = Union[TokenEvent, BranchEvent, SequenceFinished, RunFinished, RunPreempted]

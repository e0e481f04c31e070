"""The engine contract that evaluation, the server and the online monitor rely on."""
from __future__ import annotations

from typing import Optional, Protocol

from eager_mlx.config import EagerConfig
from eager_mlx.results import Event

__all__ = ["EngineLike"]


class EngineLike(Protocol):
    """What a caller may use of an engine; `eager_mlx.Engine` implements it (tests use scripted ones)."""

    @property
    def has_work(self) -> bool:
        """True while a request is waiting or running."""

    @property
    def free_rows(self) -> int:
        """Rows not used or reserved by requests."""

    @property
    def num_rows(self) -> int:
        """Rows decoded by the next step."""

    context_length: Optional[int]  # tokens the model can attend to (None: unknown); longer prompts are refused

    def add(self, request_id: str, prompt_tokens: list[int], config: EagerConfig,
            seed: Optional[int] = None, *, key_id: Optional[str] = None, first_sequence: int = 0) -> None:
        """Queue a request; its random draws depend only on `seed` (None: the engine's seed and `key_id`,
        default the request id); rows without a parent draw as sequences first_sequence, +1, ... of that key."""

    def step(self) -> list[Event]:
        """Advance every row by one token; return what happened."""

    def abort(self, request_id: str) -> list[Event]:
        """Stop a request now; return its events (RunFinished among them)."""

    def finish_sequence(self, request_id: str, sequence: int, reason: str = "pruned") -> list[Event]:
        """Stop one running sequence now."""

"""Per-row recurrent state (the `ArraysCache` layers of hybrid and state-space models).

A recurrent layer's state has a fixed size, so every row simply owns its own copy, stacked in
row order: `current[j]` is (rows, ...). The prompt's state is computed once by the prefill and
copied into the request's first rows; a fork copies the parent's state (cost independent of the
prompt and of the suffix length).

Repairs: the engine dispatches pass k+1 before it has read pass k, then re-runs column k+1 for
new children and for parents whose token changed. A state cannot be trimmed back, so the state
before the last full pass is kept (`before`, the arrays that pass read: no copy) and a repair
starts from it.
"""
from __future__ import annotations

from typing import Optional

import mlx.core as mx
from mlx_lm.models.cache import ArraysCache

__all__ = ["RecurrentLeaf"]


class RecurrentLeaf:
    """The per-row states of one recurrent layer."""

    def __init__(self, size: int):
        self.size = size
        self.current: Optional[list] = None  # state after the last written column, one array per entry
        self.before: Optional[list] = None  # state before it (what the last full pass read)
        self._pass: Optional[tuple] = None
        self.unwritten: list[int] = []  # entries the last pass left unchanged (checked at load)

    def begin(self, slots: Optional[mx.array]) -> ArraysCache:
        """The ArraysCache the model sees in a pass over all rows (None) or the given slots (a repair)."""
        cache = ArraysCache(self.size)
        if slots is None:
            cache.cache = list(self.current)
        else:
            cache.cache = [None if a is None else a[slots] for a in self.before]
        self._pass = (slots, cache, list(cache.cache))
        return cache

    def end(self) -> None:
        """Take the states the model wrote in the pass."""
        slots, cache, inputs = self._pass
        self._pass = None
        self.unwritten = [j for j in range(self.size) if cache.cache[j] is inputs[j]]
        if slots is None:
            self.before, self.current = self.current, list(cache.cache)
            return
        for j, new in enumerate(cache.cache):
            if new is not None:
                self.current[j][slots] = new.astype(self.current[j].dtype)

    def add_rows(self, prompt: list, count: int) -> None:
        """Append `count` rows starting from the prompt's state (batch 1)."""
        rows = [None if a is None else mx.repeat(a, count, axis=0) for a in prompt]
        if self.current is None:
            self.current = rows
        else:
            self.current = [_cat(a, b) for a, b in zip(self.current, rows)]
        self.before = None

    def copy_row(self, src: int, dst: int) -> None:
        """Give slot `dst` the state of `src` (dst may be the next new row: a fork)."""
        for states in (self.current, self.before):
            if states is None:
                continue
            for j, a in enumerate(states):
                if a is None:
                    continue
                if dst == a.shape[0]:
                    states[j] = mx.concatenate([a, a[src : src + 1]])
                else:
                    a[dst] = a[src]

    def truncate(self, rows: int) -> None:
        """Keep the first `rows` rows."""
        self.current = [None if a is None else a[:rows] for a in self.current]
        self.before = None

    def release(self) -> None:
        self.current = self.before = None

    def arrays(self) -> list[mx.array]:
        return [a for a in self.current or [] if a is not None]

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays())

    def row_bytes(self) -> int:
        return sum(a.nbytes // max(1, a.shape[0]) for a in self.arrays())


def _cat(a: Optional[mx.array], b: Optional[mx.array]) -> Optional[mx.array]:
    if a is None or b is None:
        return a if b is None else b
    return mx.concatenate([a, b.astype(a.dtype)])

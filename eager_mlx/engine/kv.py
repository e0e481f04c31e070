"""Shared-prefix KV storage: a prompt's KV is stored once per request; each row keeps only its own suffix.

How a fork stays cheap
----------------------
Every request is prefilled once with mlx-lm's ordinary caches (prefix.py); what the rows need of
them (`cache_kinds.prompt_state`) is then kept per layer, shared by all of the request's rows. Rows
store only what they generated, in one batch buffer per attention layer of shape
(row slots, heads, columns, D). All rows advance in lockstep, so a column is a decode pass: a
row that joined later simply starts at a later column, and the columns before its start are
masked out. Recurrent layers (`recurrent.RecurrentLeaf`) keep a fixed-size state per row.

Sliding-window layers (a `RotatingKVCache(max_size=W)` in the model's `make_cache`) keep only the
last W - 1 prompt positions and a ring of the last W suffix columns. Latent attention (MLA:
deepseek_v3, glm4_moe_lite, ...) caches (kv_latent, k_pe); for those layers `update_and_fetch`
returns an identity matrix as k_pe, so the additive "mask" the model computes from it is exactly
the scaled rope query, and attention.py computes the rope scores against prompt and suffix.

Forking a row copies only its suffix columns into a free slot: the cost grows with the tokens
generated since the prompt (at most W on sliding layers), never with the prompt length, and the
prompt's KV is never copied.

This module is the storage and the cache protocol mlx-lm layers call (`LayerCache`: per-row rope
`offset`, `update_and_fetch`, a `make_mask` that returns None); attention.py computes attention
over it and routing.py routes the model's `scaled_dot_product_attention` calls to it. The load
check (probe.py) watches what the model does through `SharedPrefixKV.probe`.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Optional

import mlx.core as mx

from eager_mlx.engine import attention
from eager_mlx.engine.cache_kinds import LeafSpec, Nesting, nest, prompt_state
from eager_mlx.engine.recurrent import RecurrentLeaf

__all__ = ["PassLayout", "PromptGroup", "SharedPrefixKV", "LayerCache", "active_store"]

_COLUMN_STEP = 16  # buffers grow by 1/16 of what is needed, in multiples of this
_SOLO_STEP = 256  # a row alone grows its [prompt | suffix] buffers by this many positions (as mlx-lm's KVCache)
_ACTIVE = threading.local()  # .store: the SharedPrefixKV whose pass runs on this thread


@dataclass
class PromptGroup:
    """The rows of one request inside a pass (they are in lockstep: one position for all)."""

    request_id: str
    positions: Optional[mx.array]  # row positions within the pass (None: all rows, in order)
    offset: int = 0  # position of the token the group's rows feed in this pass


@dataclass
class PassLayout:
    """What one forward pass writes and reads: set by the engine before calling the model."""

    slots: Optional[mx.array]  # buffer slots of the pass's rows; None means slots [0, n)
    n: int
    column: int  # absolute column this pass writes
    offsets: mx.array  # (n,) rope positions (prompt length + tokens before this one)
    lo: int  # first absolute column any row of the pass can see
    mask: Optional[mx.array]  # (n, column - lo + 1) bool: column visible to the row (None: all are)
    groups: list[PromptGroup]
    inverse: Optional[mx.array]  # restores pass order after concatenating groups
    starts: Optional[mx.array] = None  # (n,) first column of each row (for ring buffers)
    solo: Optional[tuple] = None  # (request id, sequence, first column) when the pass is one row alone


class SharedPrefixKV:
    """Per-request prompt state plus per-row suffix buffers (attention) and states (recurrent)."""

    def __init__(self, specs: list[LeafSpec], nesting: Nesting, max_slots: int = 1 << 30, mla: frozenset = frozenset()):
        self.max_slots = max_slots
        self.nesting = nesting
        self.prompts: dict[str, list] = {}
        self.leaves: list = [
            RecurrentLeaf(s.state_size) if s.kind == "recurrent" else LayerCache(self, i, s.window, i in mla)
            for i, s in enumerate(specs)
        ]
        self.attention = [x for x in self.leaves if isinstance(x, LayerCache)]
        self.recurrent = [x for x in self.leaves if isinstance(x, RecurrentLeaf)]
        self._global = [x for x in self.attention if x.window is None]
        self.base = 0  # absolute column of buffer column 0 (global layers)
        self.cap_slots = 0
        self.cap_cols = 0
        self.layout: Optional[PassLayout] = None
        self.solo: Optional[tuple] = None  # the row that runs alone in [prompt | suffix] buffers (see LayerCache)
        self.probe: Any = None  # the load check (probe.Probe) while it runs: notes what the model does
        self._handed: list[tuple] = []  # (keys, layer) returned by update_and_fetch in this pass
        self._ring_masks: dict[int, mx.array] = {}

    # ---- capacity -------------------------------------------------------
    def release(self) -> None:
        """Drop the row buffers and states (no rows left); they are allocated again on the next write."""
        self.solo = None
        for leaf in self.leaves:
            leaf.release()

    # ---- one row alone ---------------------------------------------------
    def leave_solo(self) -> None:
        """The row that ran alone is joined by others: its suffix moves into row slot 0 of the row buffers
        (call after `reserve`)."""
        if self.solo is not None:
            for leaf in self.attention:
                leaf.leave_solo(self.solo[2])
            self.solo = None

    def drop_solo(self) -> None:
        """The row that ran alone finished: its buffers go."""
        self.solo = None
        for leaf in self.attention:
            leaf.solo_keys = leaf.solo_values = None

    def _allocated(self) -> bool:
        return any(x.keys is not None for x in self.attention)

    def _target(self, slots: int, column: int, lo: int) -> Optional[tuple[int, int]]:
        """(slots, columns) the buffers must grow to, or None when they already fit."""
        cols_fit = not self._global or column - self.base < self.cap_cols
        if slots <= self.cap_slots and cols_fit:
            return None
        grown = self.cap_slots + max(4, self.cap_slots // 4)  # rows arrive one fork at a time
        new_slots = self.cap_slots if slots <= self.cap_slots else max(slots, min(grown, self.max_slots))
        return new_slots, (_round_up(column - lo + 1) if self._global else 0)

    def reserve(self, slots: int, column: int, lo: int) -> None:
        """Make room for `slots` row slots and absolute `column`; drop columns before `lo`.

        Grows rows by a quarter (up to `max_slots`) and columns by a sixteenth, so copies are amortised.
        """
        if not self._allocated():
            # Allocated lazily on the first write, when shapes are known.
            self.base, self.cap_slots = lo, max(slots, min(8, self.max_slots))
            self.cap_cols = _round_up(column - lo + 1)
            return
        target = self._target(slots, column, lo)
        if target is None:
            return
        new_slots, new_cols = target
        # Keep what was written in [lo, column] (a repair pass rewrites a written column).
        keep = max(0, min(column + 1, self.base + self.cap_cols) - lo)
        for leaf in self.attention:
            leaf.regrow(new_slots, new_cols if leaf.window is None else leaf.window, lo - self.base, keep)
        self.cap_slots = new_slots
        if self._global:
            self.base, self.cap_cols = lo, new_cols

    def bytes_after(self, slots: int, column: int, lo: int) -> int:
        """Bytes held once `reserve(slots, column, lo)` has run and `slots` rows have a state."""
        total = self._prompt_bytes() + sum(x.row_bytes() for x in self.recurrent) * slots
        if not self._allocated():
            return total + sum(x.nbytes() for x in self.attention)
        target = self._target(slots, column, lo) or (self.cap_slots, self.cap_cols)
        for leaf in self.attention:
            cols = target[1] if leaf.window is None else leaf.window
            total += target[0] * cols * leaf.cell_bytes()
        return total

    # ---- rows -----------------------------------------------------------
    def copy_row(self, src: int, dst: int, start: int, stop: int) -> None:
        """Copy slot `src`'s absolute columns [start, stop) and state into slot `dst` (a fork or a move)."""
        self.leave_solo()
        for leaf in self.leaves:
            if isinstance(leaf, RecurrentLeaf):
                leaf.copy_row(src, dst)
            elif stop > start:
                leaf.copy_row(src, dst, start, stop)

    def truncate(self, rows: int) -> None:
        """Only the first `rows` slots hold rows now (after finished rows were dropped)."""
        for leaf in self.recurrent:
            leaf.truncate(rows)

    def add_prompt(self, request_id: str, caches: list, prompt_len: int) -> None:
        """Keep what the rows need of a request's prefilled mlx-lm caches."""
        self.prompts[request_id] = prompt_state(caches, prompt_len)

    def add_rows(self, request_id: str, count: int) -> None:
        """Append `count` new rows of a request (after the current rows): they start from its prompt state."""
        for i, leaf in enumerate(self.leaves):
            if isinstance(leaf, RecurrentLeaf):
                leaf.add_rows(self.prompts[request_id][i], count)

    def drop_prompt(self, request_id: str) -> None:
        self.prompts.pop(request_id, None)

    def _prompt_bytes(self) -> int:
        total = 0
        for parts in self.prompts.values():
            for part in parts:
                arrays = part if isinstance(part, list) else part[:2]
                total += sum(a.nbytes for a in arrays if a is not None)
        return total

    def nbytes(self) -> int:
        """Bytes held: prompt state once per request plus the row buffers and states."""
        return self._prompt_bytes() + sum(leaf.nbytes() for leaf in self.leaves)

    def arrays(self) -> list[mx.array]:
        """The live buffers (to evaluate after in-place edits)."""
        return [a for leaf in self.leaves for a in leaf.arrays()]

    # ---- the pass ---------------------------------------------------------
    def begin_pass(self, layout: PassLayout) -> list:
        """Set the pass layout; returns the cache list to call the model with."""
        self.layout = layout
        self._ring_masks = {}
        self._handed = []
        if self.solo is not None and layout.solo != self.solo:
            self.leave_solo()
        if layout.solo is not None and attention.solo_allowed():
            if self.solo is None:
                for leaf in self.attention:
                    leaf.enter_solo(layout)
            self.solo = layout.solo
        _ACTIVE.store = self
        objs = [leaf.begin(layout.slots) if isinstance(leaf, RecurrentLeaf) else leaf for leaf in self.leaves]
        return nest(self.nesting, objs)

    def end_pass(self) -> None:
        """Collect the states the recurrent layers wrote (also called when the model raised)."""
        _ACTIVE.store = None
        self._handed = []
        for leaf in self.recurrent:
            leaf.end()

    def owner(self, keys: mx.array) -> Optional["LayerCache"]:
        """The layer whose cache returned `keys` in this pass (a layer sharing another's KV)."""
        return next((layer for k, layer in self._handed if k is keys), None)

    def ring_mask(self, window: int) -> mx.array:
        """(n, window) bool: ring entry visible to the row (it holds one of the row's own columns)."""
        mask = self._ring_masks.get(window)
        if mask is None:
            column = self.layout.column
            held = mx.array([column - (column - i) % window for i in range(window)], dtype=mx.int32)
            mask = self._ring_masks[window] = held[None] >= self.layout.starts[:, None]
        return mask


def _round_up(columns: int) -> int:
    # Headroom: a growth copies the buffer, so ~16 copies of its final size in all, which is
    # small next to attention reading it every step; the waste stays under ~1/16.
    columns += columns // 16
    return -(-columns // _COLUMN_STEP) * _COLUMN_STEP


class LayerCache:
    """What one attention layer sees as its cache during an engine pass; holds its row suffixes.

    Global layers store columns [base, base + columns); sliding layers (`window` W) a ring of W
    columns, column c at index c % W.
    """

    def __init__(self, store: SharedPrefixKV, index: int, window: Optional[int], mla: bool = False):
        self.store = store
        self.index = index
        self.window = window
        self.mla = mla
        self.keys: Optional[mx.array] = None  # (slots, heads, columns, D)
        self.values: Optional[mx.array] = None
        self._eye: Optional[mx.array] = None
        # A row alone (B = 1, global layers): [prompt | suffix] in one buffer grown in steps, as mlx-lm's
        # KVCache, attended with one fused call; `solo_len` positions are filled.
        self.solo_ok = window is None and not mla
        self.solo_keys: Optional[mx.array] = None
        self.solo_values: Optional[mx.array] = None
        self.solo_len = 0
        self.solo_prompt = 0  # positions of the prompt at the start of the solo buffers

    # ---- storage --------------------------------------------------------
    def release(self) -> None:
        self.keys = self.values = self.solo_keys = self.solo_values = None

    def arrays(self) -> list[mx.array]:
        return [a for a in (self.keys, self.values, self.solo_keys, self.solo_values) if a is not None]

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays())

    def cell_bytes(self) -> int:
        """Bytes of one (slot, column) cell."""
        if self.keys is None:
            return 0
        return (self.keys.nbytes + self.values.nbytes) // (self.keys.shape[0] * self.keys.shape[2])

    def _col(self, column: int) -> int:
        return column % self.window if self.window else column - self.store.base

    def regrow(self, slots: int, columns: int, start: int, keep: int) -> None:
        """Reallocate to (slots, columns); global layers keep `keep` columns from buffer column `start`."""
        if self.keys is None:
            return
        k, v = self.keys, self.values
        nk = mx.zeros((slots, k.shape[1], columns, k.shape[3]), k.dtype)
        nv = mx.zeros((slots, v.shape[1], columns, v.shape[3]), v.dtype)
        rows = min(slots, k.shape[0])
        if self.window:
            nk[:rows], nv[:rows] = k[:rows], v[:rows]
        elif keep:
            nk[:rows, :, :keep, :] = k[:rows, :, start : start + keep, :]
            nv[:rows, :, :keep, :] = v[:rows, :, start : start + keep, :]
        self.keys, self.values = nk, nv

    def copy_row(self, src: int, dst: int, start: int, stop: int) -> None:
        if self.keys is None:
            return
        if self.window:
            self.keys[dst], self.values[dst] = self.keys[src], self.values[src]
            return
        a, b = self._col(start), self._col(stop)
        self.keys[dst, :, a:b, :] = self.keys[src, :, a:b, :]
        self.values[dst, :, a:b, :] = self.values[src, :, a:b, :]

    # ---- the cache protocol mlx-lm layers use ----------------------------
    @property
    def offset(self) -> mx.array:
        return self.store.layout.offsets

    def make_mask(self, *args, window_size: Optional[int] = None, **kwargs):
        if self.store.probe is not None:
            self.store.probe.asked(self.index, window_size)
        return None  # masking is done in attention.py

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        if self.solo_keys is not None:
            return self._solo_write(keys, values)
        self._write(keys, values)
        if self.mla:
            # The model computes (q_pe * scale) @ k_pe^T as an additive mask: with k_pe = I that
            # mask is the scaled rope query itself, and attention.py does the rest.
            if self._eye is None or self._eye.shape[-1] != values.shape[-1]:
                self._eye = mx.eye(values.shape[-1], dtype=values.dtype)[None, None]
            values = self._eye
        if self.store.probe is not None:
            self.store.probe.wrote(self.index, keys, values)
        self.store._handed.append((keys, self))
        return keys, values

    def _write(self, k: mx.array, v: mx.array) -> None:
        store, lay = self.store, self.store.layout
        if self.keys is None:
            cols = self.window or store.cap_cols
            slots = max(store.cap_slots, lay.n)
            self.keys = mx.zeros((slots, k.shape[1], cols, k.shape[3]), k.dtype)
            self.values = mx.zeros((slots, v.shape[1], cols, v.shape[3]), v.dtype)
        c = self._col(lay.column)
        if lay.slots is None:
            self.keys[: lay.n, :, c : c + 1, :] = k
            self.values[: lay.n, :, c : c + 1, :] = v
        else:
            self.keys[lay.slots, :, c : c + 1, :] = k
            self.values[lay.slots, :, c : c + 1, :] = v

    def attend(self, queries, keys, values, scale, mask=None, sinks=None, shared=False) -> mx.array:
        """Attention of one decode token per row over [prompt KV | own suffix] (attention.py).

        `shared`: the call comes from another layer that reuses this layer's KV (gemma4).
        """
        if self.store.probe is not None:
            self.store.probe.attended(self.index, keys, values, sinks, shared)
        if isinstance(mask, str) and mask == "causal":
            mask = None
        if self.solo_keys is not None and mask is None:  # one row alone: one fused call, as mlx-lm
            return mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale, mask=None, sinks=sinks)
        if mask is not None and not (self.mla and mask.shape[-1] == self.values.shape[-1]):
            raise ValueError("the model passes its own attention mask during decoding")
        if self.mla and mask is None:
            raise ValueError("a latent-attention layer did not pass its rope scores")
        return attention.attend(self, queries, scale, mask, sinks)


    # ---- one row alone -----------------------------------------------------
    def enter_solo(self, lay: PassLayout) -> None:
        """Start [prompt | suffix] buffers for the pass's one row: its prompt KV, then the suffix columns it
        has so far (from row slot 0)."""
        if not self.solo_ok:
            return
        kp, vp, _ = self.store.prompts[lay.groups[0].request_id][self.index]
        parts_k, parts_v = [kp], [vp]
        start = lay.solo[2]
        if self.keys is not None and lay.column > start:
            a, b = self._col(start), self._col(lay.column)
            parts_k.append(self.keys[:1, :, a:b, :])
            parts_v.append(self.values[:1, :, a:b, :])
        self.solo_prompt = kp.shape[2]
        self.solo_len = sum(x.shape[2] for x in parts_k)
        room = _SOLO_STEP * (1 + self.solo_len // _SOLO_STEP)
        self.solo_keys = _padded(mx.concatenate(parts_k, axis=2), room)
        self.solo_values = _padded(mx.concatenate(parts_v, axis=2), room)

    def _solo_write(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        n = self.solo_len
        if n >= self.solo_keys.shape[2]:
            self.solo_keys = _padded(self.solo_keys, n + _SOLO_STEP)
            self.solo_values = _padded(self.solo_values, n + _SOLO_STEP)
        self.solo_keys[:, :, n : n + 1, :] = k
        self.solo_values[:, :, n : n + 1, :] = v
        self.solo_len = n + 1
        keys, values = self.solo_keys[:, :, : n + 1, :], self.solo_values[:, :, : n + 1, :]
        self.store._handed.append((keys, self))
        return keys, values

    def leave_solo(self, start: int) -> None:
        """Write the solo row's suffix columns (from `start`) into row slot 0; drop the solo buffers."""
        if self.solo_keys is None:
            return
        prompt = self.solo_prompt
        written = self.solo_len - prompt
        if written > 0:
            if self.keys is None:
                shape = (max(self.store.cap_slots, 1), self.solo_keys.shape[1], self.store.cap_cols)
                self.keys = mx.zeros(shape + (self.solo_keys.shape[3],), self.solo_keys.dtype)
                self.values = mx.zeros(shape + (self.solo_values.shape[3],), self.solo_values.dtype)
            a = self._col(start)
            self.keys[0, :, a : a + written, :] = self.solo_keys[0, :, prompt : self.solo_len, :]
            self.values[0, :, a : a + written, :] = self.solo_values[0, :, prompt : self.solo_len, :]
        self.solo_keys = self.solo_values = None


def _padded(x: mx.array, size: int) -> mx.array:
    """x grown along the position axis to `size` (zeros after its positions)."""
    pad = mx.zeros(x.shape[:2] + (size - x.shape[2], x.shape[3]), x.dtype)
    return mx.concatenate([x, pad], axis=2)


def active_store() -> Optional[SharedPrefixKV]:
    """The store whose pass runs on this thread (None outside a pass)."""
    return getattr(_ACTIVE, "store", None)

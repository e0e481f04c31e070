"""Shared-prefix KV cache: a prompt's KV is stored once; each row keeps only its own suffix.

How a fork stays cheap
----------------------
Every request is prefilled once with mlx-lm's ordinary caches; what the rows need of them
(`cache_kinds.prompt_state`) is then kept per layer, shared by all of the request's rows. Rows
store only what they generated, in one batch buffer per attention layer of shape
(row slots, heads, columns, D). All rows advance in lockstep, so a column is a decode pass: a
row that joined later simply starts at a later column, and the columns before its start are
masked out. Recurrent layers (`recurrent.RecurrentLeaf`) keep a fixed-size state per row.

Attention for a row is over [its request's prompt KV | its own suffix columns], computed one of
three ways, all exact (LayerCache._attend picks by the pass's shape):

* split (any prompt length, several requests): two parts merged by their maxima and sums (as
  in cascade / flash-decoding attention): the queries of all rows of one request attend to
  that request's prompt KV together, as one matmul (rows play the role of query positions, so
  the prompt KV is read once per pass), and each row attends to its own suffix columns;
* joined (one request, short prompt): the scores against the prompt and the suffix under one
  softmax; every row multiplies against the prompt KV in place (it stays in cache). Fewer
  graph nodes, which is what a short-prompt step costs;
* copied (the same case on a GPU): [prompt | suffix] put together per row for the pass (a
  small copy, never stored) and one fused `mx.fast.scaled_dot_product_attention` kernel.

Matmuls run in the KV's dtype (float16 on a GPU: the rounding of mlx-lm's unfused attention);
softmax statistics are float32. On the CPU exp goes through exp2 (fastmath.py).

Sliding-window layers (a `RotatingKVCache(max_size=W)` in the model's `make_cache`) keep only the
last W - 1 prompt positions and a ring of the last W suffix columns, and hide what lies outside
the window (a fully hidden part gets a large finite score, not -inf, so the merge stays finite).
Attention sinks (one logit per head, gpt-oss) join the merged log-sum-exp.

Latent attention (MLA: deepseek_v3, glm4_moe_lite, ...) caches (kv_latent, k_pe) and adds the
rope part of the scores as an additive mask computed from the keys the cache returns. For those
layers `update_and_fetch` returns an identity matrix as k_pe, so that "mask" is exactly the
scaled rope query; the rope scores against the shared prompt and the row's suffix are then
computed here like the rest.

Forking a row copies only its suffix columns into a free slot: the cost grows
with the tokens generated since the prompt (at most W on sliding layers), never with the
prompt length, and the prompt's KV is never copied.

The cache plugs into unmodified mlx-lm models: `LayerCache` is passed as each
attention layer's cache (it provides per-row rope `offset`, `update_and_fetch` and a
`make_mask` that returns None), and `install_attention` wraps the model
module's `scaled_dot_product_attention` so that a call made with a `LayerCache`
is routed to `LayerCache.attend`; every other call goes to mlx-lm unchanged. A model whose
attention does not go through that function (hand-written attention) is caught by the engine's
load check (`probe.py`) and refused.
"""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import Optional

import mlx.core as mx

from eager_mlx.engine import fastmath
from eager_mlx.engine.cache_kinds import LeafSpec, Nesting, nest, prompt_state
from eager_mlx.engine.recurrent import RecurrentLeaf

__all__ = ["PassLayout", "PromptGroup", "SharedPrefixKV", "LayerCache", "install_attention"]

_COLUMN_STEP = 16  # buffers grow by 1/16 of what is needed, in multiples of this
_HIDDEN = -1e9  # score of a key outside the window: finite, so an all-hidden part cannot give NaN
# _attend_joined (one softmax over [prompt | suffix]) while the scores stay small and every row can
# re-read the prompt KV from cache; else _attend_split (reads the prompt once for all rows).
_SHORT_SCORES = 1 << 16  # query heads x (prompt + suffix) columns
_SHORT_PROMPT_BYTES = 1 << 18  # prompt keys + values of one layer
# On a GPU, _attend_copied (one fused attention kernel over a per-pass copy of [prompt | suffix])
# while the copy stays under this per layer; on the CPU (no fused kernel) only when forced (tests).
_COPY_BYTES = 1 << 20
_COPY_ON_CPU = False
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
        self.discover = False  # load check: let every call through, note what the model passes
        self.checking = False  # load check: compare what attention gets with what the cache returned
        self.unrouted = 0  # attention calls in a pass on keys no cache of the pass returned
        self._handed: list[tuple] = []  # (keys, layer) returned by update_and_fetch in this pass
        self._ring_masks: dict[int, mx.array] = {}

    # ---- capacity -------------------------------------------------------
    def release(self) -> None:
        """Drop the row buffers and states (no rows left); they are allocated again on the next write."""
        for leaf in self.leaves:
            leaf.release()

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


def _f32(x: mx.array) -> mx.array:
    return x if x.dtype == mx.float32 else x.astype(mx.float32)


_COMPILED: dict = {}


def _compiled(fn):
    """`fn` compiled once per exp flavour (fastmath picks one by device at trace time), shapeless:
    the suffix grows by one column every step."""
    key = (fn, fastmath.uses_exp2())
    if key not in _COMPILED:
        _COMPILED[key] = mx.compile(fn, shapeless=True)
    return _COMPILED[key]


def _weigh(scores: mx.array, values: mx.array) -> tuple[mx.array, mx.array, mx.array]:
    """One part of a split softmax over the last axis: (e @ values, max, sum of e), e = exp(scores - max).

    The softmax over [part 1 | part 2] is then (o1 a1 + o2 a2) / (l1 a1 + l2 a2) with
    a_i = exp(max_i - max): see _merge.
    """
    scores = _f32(scores)
    peak = scores.max(axis=-1, keepdims=True)
    e = fastmath.exp(scores - peak)
    return _f32(e.astype(values.dtype) @ values), peak, e.sum(axis=-1, keepdims=True)


def _exp_sum(scores: mx.array) -> tuple[mx.array, mx.array]:
    """exp(scores - max) and its sum over the last axis: a softmax before its division."""
    e = fastmath.exp(scores - scores.max(axis=-1, keepdims=True))
    return e, e.sum(axis=-1, keepdims=True)


def _exp_part(scores: mx.array) -> tuple[mx.array, mx.array]:
    # mlx 0.32.4 crashes on a shapeless-compiled reduction over an axis of size 1 (one column).
    return (_exp_sum if scores.shape[-1] == 1 else _compiled(_exp_sum))(scores)


def _merge(o1, m1, l1, o2, m2, l2):
    """Softmax-weighted output over two parts from their _weigh results."""
    peak = mx.maximum(m1, m2)
    a, b = fastmath.exp(m1 - peak), fastmath.exp(m2 - peak)
    return (o1 * a + o2 * b) / (l1 * a + l2 * b)


def _merge_sinks(o1, m1, l1, o2, m2, l2, sinks):
    """_merge with one extra logit per head (attention sinks) that has no value."""
    peak = mx.maximum(mx.maximum(m1, m2), sinks)
    a, b = fastmath.exp(m1 - peak), fastmath.exp(m2 - peak)
    return (o1 * a + o2 * b) / (l1 * a + l2 * b + fastmath.exp(sinks - peak))


def _weigh_part(scores: mx.array, values: mx.array) -> tuple[mx.array, mx.array, mx.array]:
    # (see _exp_part)
    return (_weigh if scores.shape[-1] == 1 else _compiled(_weigh))(scores, values)


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
        self._returned: Optional[tuple] = None
        self._eye: Optional[mx.array] = None
        # What the model did in the last passes (checked at load by probe.py).
        self.writes = 0
        self.attends = 0
        self.asked_window: Optional[int] = None
        self.changed = False  # attention got other keys or values than the cache returned
        self.sinks = False  # the layer passes attention sinks
        self.shared = 0  # calls from layers that reuse this layer's KV
        self.seen: list[tuple] = []

    # ---- storage --------------------------------------------------------
    def release(self) -> None:
        self.keys = self.values = None

    def arrays(self) -> list[mx.array]:
        return [a for a in (self.keys, self.values) if a is not None]

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
        self.asked_window = window_size
        return None  # masking is done in attend()

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        self.writes += 1
        self._write(keys, values)
        if self.mla and not self.store.discover:
            # The model computes (q_pe * scale) @ k_pe^T as an additive mask: with k_pe = I that
            # mask is the scaled rope query itself, and attend() does the rest.
            if self._eye is None or self._eye.shape[-1] != values.shape[-1]:
                self._eye = mx.eye(values.shape[-1], dtype=values.dtype)[None, None]
            values = self._eye
        self._returned = (keys, values)
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

    # ---- attention --------------------------------------------------------
    def attend(self, queries, keys, values, scale, mask=None, sinks=None, shared=False) -> mx.array:
        """Attention of one decode token per row over [prompt KV | own suffix].

        `shared`: the call comes from another layer that reuses this layer's KV (gemma4).
        """
        self.attends += not shared
        self.shared += shared
        self.sinks = sinks is not None
        if self.store.checking:
            rk, rv = self._returned or (None, None)
            self.changed = not _same(keys, rk) or (not self.mla and not _same(values, rv))
        if isinstance(mask, str) and mask == "causal":
            mask = None
        if mask is not None and not (self.mla and mask.shape[-1] == self.values.shape[-1]):
            raise ValueError("the model passes its own attention mask during decoding")
        if self.mla and mask is None:
            raise ValueError("a latent-attention layer did not pass its rope scores")
        return self._attend(queries, scale, mask, sinks)

    def _suffix(self, lay: PassLayout) -> tuple[mx.array, mx.array, mx.array]:
        """(keys, values, visible) of the pass's rows' suffix columns."""
        if self.window:
            a, b, visible = 0, self.window, self.store.ring_mask(self.window)
        else:
            a, b, visible = lay.lo - self.store.base, lay.column - self.store.base + 1, lay.mask
        if lay.slots is None:
            return self.keys[: lay.n, :, a:b, :], self.values[: lay.n, :, a:b, :], visible
        return self.keys[lay.slots, :, a:b, :], self.values[lay.slots, :, a:b, :], visible

    def _scores(self, q, k, v, q_pe):
        """Scores of q against keys k (plus the rope part for latent attention) and the values to mix."""
        s = q.astype(k.dtype) @ k.swapaxes(-1, -2)
        if q_pe is None:
            return s, v
        return _f32(s) + _f32(q_pe.astype(v.dtype) @ v.swapaxes(-1, -2)), k  # MLA: the latents are the values

    def _attend(self, queries, scale, q_pe, sinks) -> mx.array:
        lay = self.store.layout
        n, heads, _, dim = queries.shape
        kv_heads = self.keys.shape[1]
        rep = heads // kv_heads
        q = queries.reshape(n, kv_heads, rep, dim) * scale
        if q_pe is not None:
            q_pe = q_pe.reshape(n, kv_heads, rep, -1)
        ks, vs, visible = self._suffix(lay)
        if q_pe is None and self._copy_prompt(lay):
            return self._attend_copied(lay, queries, scale, ks, vs, visible, sinks)
        if sinks is not None:
            sinks = _f32(sinks).reshape(1, kv_heads, rep, 1)
        if self._short(lay, n * heads, ks.shape[2]):
            out = self._attend_joined(lay, q, q_pe, ks, vs, visible, sinks)
        else:
            out = self._attend_split(lay, q, q_pe, ks, vs, visible, sinks)
        return out.reshape(n, heads, 1, -1).astype(queries.dtype)

    def _copy_prompt(self, lay: PassLayout) -> bool:
        """Whether the pass uses _attend_copied: off on the CPU (no fused kernel there) unless forced."""
        if len(lay.groups) != 1 or (fastmath.uses_exp2() and not _COPY_ON_CPU):
            return False
        kp, vp = self.store.prompts[lay.groups[0].request_id][self.index][:2]
        return lay.n * (kp.nbytes + vp.nbytes) <= _COPY_BYTES

    def _attend_copied(self, lay, queries, scale, ks, vs, visible, sinks) -> mx.array:
        """One request, short prompt, on a GPU: [prompt | suffix] KV put together per row for this
        pass (a copy of at most _COPY_BYTES, never stored) and one fused attention kernel."""
        g = lay.groups[0]
        kp, vp, first = self.store.prompts[g.request_id][self.index]
        n, length = ks.shape[0], kp.shape[2]
        k = mx.concatenate([mx.broadcast_to(kp, (n,) + kp.shape[1:]), ks], axis=2)
        v = mx.concatenate([mx.broadcast_to(vp, (n,) + vp.shape[1:]), vs], axis=2)
        mask = None
        if self.window or visible is not None:
            seen = self._in_window(g, first, length) if self.window else mx.ones((length,), dtype=mx.bool_)
            own = mx.ones((n, ks.shape[2]), dtype=mx.bool_) if visible is None else visible
            mask = mx.concatenate([mx.broadcast_to(seen, (n, length)), own], axis=1)[:, None, None, :]
        return mx.fast.scaled_dot_product_attention(queries, k, v, scale=scale, mask=mask, sinks=sinks)

    def _short(self, lay: PassLayout, queries: int, suffix: int) -> bool:
        """Whether the pass attends over [prompt | suffix] as one softmax (_attend_joined)."""
        if len(lay.groups) != 1:
            return False
        kp, vp = self.store.prompts[lay.groups[0].request_id][self.index][:2]
        prompt = kp.shape[2]
        cached = lay.n == 1 or (kp.nbytes + vp.nbytes) <= _SHORT_PROMPT_BYTES
        return cached and queries * (prompt + suffix) <= _SHORT_SCORES

    def _attend_joined(self, lay, q, q_pe, ks, vs, visible, sinks) -> mx.array:
        """One request, short prompt: the scores of [prompt | suffix (| sink)] under one softmax.

        Every row multiplies against the prompt KV itself (broadcast, no copy): cheap while the
        prompt KV stays in cache, and far fewer graph nodes than _attend_split.
        """
        g = lay.groups[0]
        kp, vp, first = self.store.prompts[g.request_id][self.index]
        sp, vals_p = self._scores(q, kp, vp, q_pe)
        sp = self._prompt_window(g, _f32(sp), first, kp.shape[2])
        ss, vals_s = self._scores(q, ks, vs, q_pe)
        ss = _f32(ss)
        if visible is not None:
            ss = mx.where(visible[:, None, None, :], ss, -mx.inf)  # a row always sees its current token
        parts = [sp, ss] if sinks is None else [sp, ss, mx.broadcast_to(sinks, ss.shape[:-1] + (1,))]
        e, total = _exp_part(mx.concatenate(parts, axis=-1))  # unnormalised: divide the output instead
        split = sp.shape[-1]
        o = _f32(e[..., :split].astype(vals_p.dtype) @ vals_p)
        return (o + _f32(e[..., split : split + ss.shape[-1]].astype(vals_s.dtype) @ vals_s)) / total

    def _attend_split(self, lay, q, q_pe, ks, vs, visible, sinks) -> mx.array:
        """Suffix and prompt parts apart, merged by their maxima and sums (any prompt length)."""
        s, vals = self._scores(q, ks, vs, q_pe)
        if visible is not None:
            s = mx.where(visible[:, None, None, :], s, -mx.inf)  # a row always sees its current token
        suffix = _weigh_part(s, vals)

        # Prompt part: all rows of a request at once against its prompt KV.
        parts = [self._prompt_part(g, q, q_pe) for g in lay.groups]
        prompt = parts[0] if len(parts) == 1 else [mx.concatenate(x, axis=0) for x in zip(*parts)]
        if lay.inverse is not None:
            prompt = [x[lay.inverse] for x in prompt]
        if sinks is None:
            return _compiled(_merge)(*prompt, *suffix)
        return _compiled(_merge_sinks)(*prompt, *suffix, sinks)  # one extra logit per head, no value

    def _prompt_window(self, g: PromptGroup, s: mx.array, first: int, length: int) -> mx.array:
        """Hide prompt positions that fell out of a sliding window (no-op on global layers)."""
        if not self.window:
            return s
        return mx.where(self._in_window(g, first, length), s, _HIDDEN)

    def _in_window(self, g: PromptGroup, first: int, length: int) -> mx.array:
        """(length,) bool: which held prompt positions the group's rows still see (sliding layers)."""
        return mx.arange(first, first + length) >= g.offset - self.window + 1

    def _prompt_part(self, g: PromptGroup, q: mx.array, q_pe: Optional[mx.array]) -> list[mx.array]:
        """_weigh of the group's rows against its prompt KV, in row layout (m, kv_heads, rep, .)."""
        kp, vp, first = self.store.prompts[g.request_id][self.index]
        _, kv_heads, rep, dim = q.shape

        def fold(x):  # (m, kvh, rep, d) -> (1, kvh, rep*m, d): the group's rows as query positions
            x = x if g.positions is None else x[g.positions]
            return x.transpose(1, 2, 0, 3).reshape(1, kv_heads, -1, x.shape[-1])

        m = q.shape[0] if g.positions is None else g.positions.shape[0]
        s, vals = self._scores(fold(q), kp, vp, None if q_pe is None else fold(q_pe))
        s = self._prompt_window(g, s, first, kp.shape[2])
        # Unfolding is a free reshape and a transposed view: the merge reads it strided.
        return [x.reshape(kv_heads, rep, m, -1).transpose(2, 0, 1, 3) for x in _weigh_part(s, vals)]


def _same(a, b) -> bool:
    """The same array, or equal values (a cast to another float type is harmless)."""
    return a is b or (b is not None and a.shape == b.shape and mx.array_equal(a, b).item())


def _routed(original):
    def scaled_dot_product_attention(queries, keys, values, cache=None, scale=1.0, mask=None, **kw):
        store = getattr(_ACTIVE, "store", None)
        if store is not None and not isinstance(cache, LayerCache):
            cache = store.owner(keys)
            if cache is None:  # attention on keys the engine does not hold
                store.unrouted += 1
                if not store.discover:
                    raise ValueError("a layer attends to keys that did not come from its cache")
            elif not store.discover:
                sinks = kw.pop("sinks", None)
                return cache.attend(queries, keys, values, scale, mask, sinks, shared=True)
            return original(queries, keys, values, cache=None, scale=scale, mask=mask, **kw)
        if isinstance(cache, LayerCache):
            sinks = kw.pop("sinks", None)
            if cache.store.discover:
                cache.seen.append((keys is values, mask is not None and not isinstance(mask, str), bool(kw)))
                if sinks is not None:
                    kw["sinks"] = sinks
                return original(queries, keys, values, cache=None, scale=scale, mask=mask, **kw)
            if kw:
                raise ValueError(f"unsupported attention arguments {sorted(kw)}")
            return cache.attend(queries, keys, values, scale, mask, sinks)
        return original(queries, keys, values, cache=cache, scale=scale, mask=mask, **kw)

    scaled_dot_product_attention._eager_original = original
    return scaled_dot_product_attention


def install_attention(model) -> None:
    """Route the attention of `model`'s modules through LayerCache when one is passed.

    Idempotent; calls without a LayerCache behave exactly as before.
    """
    for _, module in model.named_modules():
        mod = sys.modules.get(type(module).__module__)
        fn = getattr(mod, "scaled_dot_product_attention", None)
        if fn is not None and not hasattr(fn, "_eager_original"):
            setattr(mod, "scaled_dot_product_attention", _routed(fn))

"""Shared-prefix KV cache: a prompt's KV is stored once; each row keeps only its own suffix.

How a fork stays cheap
----------------------
Every request is prefilled once with mlx-lm's ordinary cache; its prompt keys and
values (1, heads, P, D) are then kept per layer, shared by all of its rows. Rows
store only what they generated, in one batch buffer per layer of shape
(row slots, heads, columns, D). All rows advance in lockstep, so a column is a
decode pass: a row that joined later simply starts at a later column, and the
columns before its start are masked out.

Attention for a row is computed in two parts and merged with their
log-sum-exps (as in cascade / flash-decoding attention):

* prompt part: the queries of all rows of one request attend to that request's
  prompt KV together, as one small matmul (rows play the role of query positions);
* suffix part: each row attends to its own suffix columns.

Forking a row copies only its suffix columns into a free slot: the cost grows
with the tokens generated since the prompt, never with the prompt length, and
the prompt's KV is never copied.

The cache plugs into unmodified mlx-lm models: `LayerCache` is passed as each
layer's cache (it provides per-row rope `offset`, `update_and_fetch` and a
`make_mask` that returns None), and `install_attention` wraps the model
module's `scaled_dot_product_attention` so that a call made with a `LayerCache`
is routed to `LayerCache.attend`; every other call goes to mlx-lm unchanged.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional

import mlx.core as mx

__all__ = ["PassLayout", "PromptGroup", "SharedPrefixKV", "LayerCache", "install_attention"]

_COLUMN_STEP = 16  # buffers grow by 1/16 of what is needed, in multiples of this


@dataclass
class PromptGroup:
    """The rows of one request inside a pass."""

    request_id: str
    positions: Optional[mx.array]  # row positions within the pass (None: all rows, in order)


@dataclass
class PassLayout:
    """What one forward pass writes and reads: set by the engine before calling the model."""

    slots: Optional[mx.array]  # buffer slots of the pass's rows; None means slots [0, n)
    n: int
    column: int  # absolute column this pass writes
    offsets: mx.array  # (n,) rope positions (prompt length + tokens before this one)
    lo: int  # first absolute column any row of the pass can see
    mask: mx.array  # (n, column - lo + 1) bool: column visible to the row
    groups: list[PromptGroup]
    inverse: Optional[mx.array]  # restores pass order after concatenating groups


class SharedPrefixKV:
    """Per-request prompt KV plus a batch of per-row suffix buffers, for every layer."""

    def __init__(self, num_layers: int, max_slots: int = 1 << 30):
        self.num_layers = num_layers
        self.max_slots = max_slots
        self.prompts: dict[str, list[tuple[mx.array, mx.array]]] = {}
        self.keys: list[Optional[mx.array]] = [None] * num_layers
        self.values: list[Optional[mx.array]] = [None] * num_layers
        self.base = 0  # absolute column of buffer column 0
        self._want_slots = 8
        self.layout: Optional[PassLayout] = None
        self.layers = [LayerCache(self, i) for i in range(num_layers)]

    # ---- capacity -------------------------------------------------------
    def release(self) -> None:
        """Drop the row buffers (no rows left); they are allocated again on the next write."""
        self.keys = [None] * self.num_layers
        self.values = [None] * self.num_layers

    def _allocate(self, like_k: mx.array, like_v: mx.array, slots: int, columns: int, layer: int):
        _, heads, _, dk = like_k.shape
        dv = like_v.shape[-1]
        self.keys[layer] = mx.zeros((slots, heads, columns, dk), like_k.dtype)
        self.values[layer] = mx.zeros((slots, heads, columns, dv), like_v.dtype)

    def _target(self, slots: int, column: int, lo: int) -> Optional[tuple[int, int]]:
        """(slots, columns) the buffers must grow to, or None when they already fit."""
        cap_slots, cap_cols = self.keys[0].shape[0], self.keys[0].shape[2]
        if slots <= cap_slots and column - self.base < cap_cols:
            return None
        grown = cap_slots + max(4, cap_slots // 4)  # rows arrive one fork at a time
        new_slots = cap_slots if slots <= cap_slots else max(slots, min(grown, self.max_slots))
        return new_slots, _round_up(column - lo + 1)

    def reserve(self, slots: int, column: int, lo: int) -> None:
        """Make room for `slots` row slots and absolute `column`; drop columns before `lo`.

        Grows rows by a quarter (up to `max_slots`) and columns by a sixteenth, so copies are amortised.
        """
        if self.keys[0] is None:
            self.base, self._want_slots = lo, slots
            return  # allocated lazily on the first write, when shapes are known
        target = self._target(slots, column, lo)
        if target is None:
            return
        new_slots, new_cols = target
        cap_slots, cap_cols = self.keys[0].shape[0], self.keys[0].shape[2]
        # Keep what was written in [lo, column] (a repair pass rewrites a written column).
        keep = max(0, min(column + 1, self.base + cap_cols) - lo)
        start = lo - self.base
        for i in range(self.num_layers):
            k, v = self.keys[i], self.values[i]
            nk = mx.zeros((new_slots, k.shape[1], new_cols, k.shape[3]), k.dtype)
            nv = mx.zeros((new_slots, v.shape[1], new_cols, v.shape[3]), v.dtype)
            if keep:
                nk[:cap_slots, :, :keep, :] = k[:, :, start : start + keep, :]
                nv[:cap_slots, :, :keep, :] = v[:, :, start : start + keep, :]
            self.keys[i], self.values[i] = nk, nv
        self.base = lo

    def bytes_after(self, slots: int, column: int, lo: int) -> int:
        """Bytes held once `reserve(slots, column, lo)` has run."""
        if self.keys[0] is None:
            return self.nbytes()
        target = self._target(slots, column, lo)
        if target is None:
            return self.nbytes()
        per_cell = sum((k.nbytes + v.nbytes) // (k.shape[0] * k.shape[2]) for k, v in zip(self.keys, self.values))
        return self._prompt_bytes() + target[0] * target[1] * per_cell

    # ---- rows -----------------------------------------------------------
    def copy_row(self, src: int, dst: int, start: int, stop: int) -> None:
        """Copy absolute columns [start, stop) of slot `src` into slot `dst` (a fork or a move)."""
        if self.keys[0] is None or stop <= start:
            return
        a, b = start - self.base, stop - self.base
        for i in range(self.num_layers):
            self.keys[i][dst, :, a:b, :] = self.keys[i][src, :, a:b, :]
            self.values[i][dst, :, a:b, :] = self.values[i][src, :, a:b, :]

    def add_prompt(self, request_id: str, kv: list[tuple[mx.array, mx.array]]) -> None:
        self.prompts[request_id] = kv

    def drop_prompt(self, request_id: str) -> None:
        self.prompts.pop(request_id, None)

    def _prompt_bytes(self) -> int:
        return sum(k.nbytes + v.nbytes for kv in self.prompts.values() for k, v in kv)

    def nbytes(self) -> int:
        """Bytes held: prompt KV once per request plus the suffix buffers."""
        total = self._prompt_bytes()
        if self.keys[0] is not None:
            total += sum(k.nbytes + v.nbytes for k, v in zip(self.keys, self.values))
        return total

    def arrays(self) -> list[mx.array]:
        """The live buffers (to evaluate after in-place edits)."""
        return [a for a in self.keys + self.values if a is not None]

    # ---- the pass ---------------------------------------------------------
    def write(self, layer: int, k: mx.array, v: mx.array) -> None:
        lay = self.layout
        if self.keys[layer] is None:
            slots = max(self._want_slots, lay.n, min(8, self.max_slots))
            self._allocate(k, v, slots, _round_up(lay.column - self.base + 1), layer)
        c = lay.column - self.base
        if lay.slots is None:
            self.keys[layer][: lay.n, :, c : c + 1, :] = k
            self.values[layer][: lay.n, :, c : c + 1, :] = v
        else:
            self.keys[layer][lay.slots, :, c : c + 1, :] = k
            self.values[layer][lay.slots, :, c : c + 1, :] = v

    def attend(self, layer: int, queries: mx.array, scale: float) -> mx.array:
        """Attention of one decode token per row over [prompt KV | own suffix]."""
        lay = self.layout
        n, heads, _, dim = queries.shape
        kv_heads = self.keys[layer].shape[1]
        rep = heads // kv_heads
        q = _f32(queries.reshape(n, kv_heads, rep, dim) * scale)

        # Suffix part: each row over its own columns [lo, column].
        a, b = lay.lo - self.base, lay.column - self.base + 1
        if lay.slots is None:
            ks, vs = self.keys[layer][: lay.n, :, a:b, :], self.values[layer][: lay.n, :, a:b, :]
        else:
            ks, vs = self.keys[layer][lay.slots, :, a:b, :], self.values[layer][lay.slots, :, a:b, :]
        s = q @ _f32(ks).transpose(0, 1, 3, 2)  # (n, kvh, rep, S)
        s = mx.where(lay.mask[:, None, None, :], s, -mx.inf)  # a row always sees its current token
        o_suffix, lse_suffix = _softmax_out(s, vs)

        # Prompt part: all rows of a request at once against its prompt KV.
        outs, lses = [], []
        for g in lay.groups:
            kp, vp = self.prompts[g.request_id][layer]
            qg = q if g.positions is None else q[g.positions]
            m = qg.shape[0]
            qg = qg.transpose(1, 2, 0, 3).reshape(1, kv_heads, rep * m, dim)
            s = qg @ _f32(kp).transpose(0, 1, 3, 2)  # (1, kvh, rep*m, P)
            o, lse = _softmax_out(s, vp)
            outs.append(o.reshape(kv_heads, rep, m, -1).transpose(2, 0, 1, 3))
            lses.append(lse.reshape(kv_heads, rep, m, 1).transpose(2, 0, 1, 3))
        o_prompt = outs[0] if len(outs) == 1 else mx.concatenate(outs, axis=0)
        lse_prompt = lses[0] if len(lses) == 1 else mx.concatenate(lses, axis=0)
        if lay.inverse is not None:
            o_prompt, lse_prompt = o_prompt[lay.inverse], lse_prompt[lay.inverse]

        lse = mx.logaddexp(lse_prompt, lse_suffix)
        out = o_prompt * mx.exp(lse_prompt - lse) + o_suffix * mx.exp(lse_suffix - lse)
        return out.reshape(n, heads, 1, -1).astype(queries.dtype)


def _round_up(columns: int) -> int:
    # Headroom: a growth copies the buffer, so ~16 copies of its final size in all, which is
    # small next to attention reading it every step; the waste stays under ~1/16.
    columns += columns // 16
    return -(-columns // _COLUMN_STEP) * _COLUMN_STEP


def _f32(x: mx.array) -> mx.array:
    return x if x.dtype == mx.float32 else x.astype(mx.float32)


def _softmax_out(scores: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
    """softmax(scores) @ values and the log-sum-exp of scores (last axis)."""
    lse = mx.logsumexp(scores, axis=-1, keepdims=True)
    return mx.exp(scores - lse) @ _f32(values), lse


class LayerCache:
    """What one model layer sees as its cache during an engine pass."""

    def __init__(self, store: SharedPrefixKV, layer: int):
        self.store = store
        self.layer = layer

    @property
    def offset(self) -> mx.array:
        return self.store.layout.offsets

    def make_mask(self, *args, **kwargs):
        return None  # masking is done in attend()

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        self.store.write(self.layer, keys, values)
        return keys, values  # unused: attention goes through attend()

    def attend(self, queries: mx.array, scale: float) -> mx.array:
        return self.store.attend(self.layer, queries, scale)


def _routed(original):
    def scaled_dot_product_attention(queries, keys, values, cache=None, scale=1.0, mask=None, **kw):
        if isinstance(cache, LayerCache):
            if kw.get("sinks") is not None:
                raise ValueError("attention sinks are not supported by the eager-mlx engine")
            return cache.attend(queries, scale)
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

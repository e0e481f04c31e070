"""The engine's attention: one decode token per row over [its request's prompt KV | its own suffix].

A row alone (one request with one row, B = 1) keeps [prompt | suffix] of its global layers in one
buffer and attends with one `mx.fast.scaled_dot_product_attention` call, as mlx-lm does (kv.py,
"solo"); every other pass uses one of three exact ways, picked by its shape (`attend`):

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
softmax statistics are float32. On the CPU exp goes through exp2 (fastmath.py). Sliding windows
hide what lies outside the window (a fully hidden part gets a large finite score, not -inf, so
the merge stays finite); attention sinks (one logit per head, gpt-oss) join the merged
log-sum-exp. Latent attention (MLA) adds the rope part of the scores, computed from the scaled
rope query the layer passes as its "mask" (see kv.LayerCache.update_and_fetch).

The functions read a layer's storage (`kv.LayerCache`: its row buffers, window and index, and
its store's pass layout and prompts) and never write it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Optional

import mlx.core as mx

from eager_mlx.engine import fastmath

__all__ = ["FORCED_PATHS", "attend", "forced_path", "solo_allowed"]

_HIDDEN = -1e9  # score of a key outside the window: finite, so an all-hidden part cannot give NaN
# _joined (one softmax over [prompt | suffix]) while the scores stay small and every row can re-read
# the prompt KV from cache; else _split (reads the prompt once for all rows).
_SHORT_SCORES = 1 << 16  # query heads x (prompt + suffix) columns
_SHORT_PROMPT_BYTES = 1 << 18  # prompt keys + values of one layer
# On a GPU, _copied (one fused attention kernel over a per-pass copy of [prompt | suffix]) while the
# copy stays under this per layer; on the CPU (no fused kernel) only when forced (tests).
_COPY_BYTES = 1 << 20
_COPY_ON_CPU = False
# A row alone (one request, one row): global layers keep [prompt | suffix] in one buffer and attend with
# one mx.fast call, as mlx-lm does at B = 1 (kv.LayerCache.enter_solo); off only to test the paths above.
_SOLO = True

# The settings above that force one path (the fork checks run each): split always; joined for one
# request (never copied); copied for one request, also on the CPU; solo where a request has one row,
# split otherwise.
FORCED_PATHS: dict[str, dict[str, Any]] = {
    "split": {"_SHORT_SCORES": 0, "_SHORT_PROMPT_BYTES": 0, "_COPY_BYTES": 0, "_COPY_ON_CPU": False, "_SOLO": False},
    "joined": {"_SHORT_SCORES": 1 << 40, "_SHORT_PROMPT_BYTES": 1 << 40, "_COPY_BYTES": 0, "_COPY_ON_CPU": False,
               "_SOLO": False},
    "copied": {"_SHORT_SCORES": 0, "_SHORT_PROMPT_BYTES": 0, "_COPY_BYTES": 1 << 40, "_COPY_ON_CPU": True,
               "_SOLO": False},
    "solo": {"_SHORT_SCORES": 0, "_SHORT_PROMPT_BYTES": 0, "_COPY_BYTES": 0, "_COPY_ON_CPU": False, "_SOLO": True},
}


@contextlib.contextmanager
def forced_path(name: str) -> Iterator[None]:
    """Inside the block every pass attends by path `name` (a key of FORCED_PATHS; "default": the engine's own
    choice by shape) where the pass's shape allows it. Module-wide: no other engine may run meanwhile."""
    if name != "default" and name not in FORCED_PATHS:
        raise ValueError(f"unknown attention path {name!r}")
    knobs = FORCED_PATHS.get(name, {})
    saved = {k: globals()[k] for k in knobs}
    globals().update(knobs)
    try:
        yield
    finally:
        globals().update(saved)


def solo_allowed() -> bool:
    """Whether a pass of one row alone runs on [prompt | suffix] buffers (kv.LayerCache's solo path)."""
    return _SOLO


def attend(layer: Any, queries: mx.array, scale: float, q_pe: Optional[mx.array],
           sinks: Optional[mx.array]) -> mx.array:
    """Attention of the pass's rows (queries (n, heads, 1, D)) through `layer`'s KV, by the path the pass's
    shape picks; `q_pe`: the scaled rope query of a latent-attention layer, else None."""
    lay = layer.store.layout
    n, heads, _, dim = queries.shape
    kv_heads = layer.keys.shape[1]
    rep = heads // kv_heads
    q = queries.reshape(n, kv_heads, rep, dim) * scale
    if q_pe is not None:
        q_pe = q_pe.reshape(n, kv_heads, rep, -1)
    ks, vs, visible = _suffix(layer, lay)
    if q_pe is None and _copy_prompt(layer, lay):
        return _copied(layer, lay, queries, scale, ks, vs, visible, sinks)
    if sinks is not None:
        sinks = _f32(sinks).reshape(1, kv_heads, rep, 1)
    if _short(layer, lay, n * heads, ks.shape[2]):
        out = _joined(layer, lay, q, q_pe, ks, vs, visible, sinks)
    else:
        out = _split(layer, lay, q, q_pe, ks, vs, visible, sinks)
    return out.reshape(n, heads, 1, -1).astype(queries.dtype)


# ---- pieces shared by the paths ----------------------------------------------------------
def _f32(x: mx.array) -> mx.array:
    return x if x.dtype == mx.float32 else x.astype(mx.float32)


def _prompt(layer, g) -> tuple[mx.array, mx.array, int]:
    """(keys, values, first position) of the group's prompt for this layer."""
    return layer.store.prompts[g.request_id][layer.index]


def _suffix(layer, lay) -> tuple[mx.array, mx.array, Optional[mx.array]]:
    """(keys, values, visible) of the pass's rows' suffix columns."""
    if layer.window:
        a, b, visible = 0, layer.window, layer.store.ring_mask(layer.window)
    else:
        a, b, visible = lay.lo - layer.store.base, lay.column - layer.store.base + 1, lay.mask
    if lay.slots is None:
        return layer.keys[: lay.n, :, a:b, :], layer.values[: lay.n, :, a:b, :], visible
    return layer.keys[lay.slots, :, a:b, :], layer.values[lay.slots, :, a:b, :], visible


def _scores(q, k, v, q_pe):
    """Scores of q against keys k (plus the rope part for latent attention) and the values to mix."""
    s = q.astype(k.dtype) @ k.swapaxes(-1, -2)
    if q_pe is None:
        return s, v
    return _f32(s) + _f32(q_pe.astype(v.dtype) @ v.swapaxes(-1, -2)), k  # MLA: the latents are the values


def _in_window(layer, g, first: int, length: int) -> mx.array:
    """(length,) bool: which held prompt positions the group's rows still see (sliding layers)."""
    return mx.arange(first, first + length) >= g.offset - layer.window + 1


def _prompt_window(layer, g, s: mx.array, first: int, length: int) -> mx.array:
    """Hide prompt positions that fell out of a sliding window (no-op on global layers)."""
    if not layer.window:
        return s
    return mx.where(_in_window(layer, g, first, length), s, _HIDDEN)


# ---- copied -----------------------------------------------------------------------------------
def _copy_prompt(layer, lay) -> bool:
    """Whether the pass uses _copied: off on the CPU (no fused kernel there) unless forced."""
    if len(lay.groups) != 1 or (fastmath.uses_exp2() and not _COPY_ON_CPU):
        return False
    kp, vp, _ = _prompt(layer, lay.groups[0])
    return lay.n * (kp.nbytes + vp.nbytes) <= _COPY_BYTES


def _copied(layer, lay, queries, scale, ks, vs, visible, sinks) -> mx.array:
    """One request, short prompt, on a GPU: [prompt | suffix] KV put together per row for this
    pass (a copy of at most _COPY_BYTES, never stored) and one fused attention kernel."""
    g = lay.groups[0]
    kp, vp, first = _prompt(layer, g)
    n, length = ks.shape[0], kp.shape[2]
    k = mx.concatenate([mx.broadcast_to(kp, (n,) + kp.shape[1:]), ks], axis=2)
    v = mx.concatenate([mx.broadcast_to(vp, (n,) + vp.shape[1:]), vs], axis=2)
    mask = None
    if layer.window or visible is not None:
        seen = _in_window(layer, g, first, length) if layer.window else mx.ones((length,), dtype=mx.bool_)
        own = mx.ones((n, ks.shape[2]), dtype=mx.bool_) if visible is None else visible
        mask = mx.concatenate([mx.broadcast_to(seen, (n, length)), own], axis=1)[:, None, None, :]
    return mx.fast.scaled_dot_product_attention(queries, k, v, scale=scale, mask=mask, sinks=sinks)


# ---- joined -----------------------------------------------------------------------------------
def _short(layer, lay, queries: int, suffix: int) -> bool:
    """Whether the pass attends over [prompt | suffix] as one softmax (_joined)."""
    if len(lay.groups) != 1:
        return False
    kp, vp, _ = _prompt(layer, lay.groups[0])
    cached = lay.n == 1 or (kp.nbytes + vp.nbytes) <= _SHORT_PROMPT_BYTES
    return cached and queries * (kp.shape[2] + suffix) <= _SHORT_SCORES


def _joined(layer, lay, q, q_pe, ks, vs, visible, sinks) -> mx.array:
    """One request, short prompt: the scores of [prompt | suffix (| sink)] under one softmax.

    Every row multiplies against the prompt KV itself (broadcast, no copy): cheap while the
    prompt KV stays in cache, and far fewer graph nodes than _split.
    """
    g = lay.groups[0]
    kp, vp, first = _prompt(layer, g)
    sp, vals_p = _scores(q, kp, vp, q_pe)
    sp = _prompt_window(layer, g, _f32(sp), first, kp.shape[2])
    ss, vals_s = _scores(q, ks, vs, q_pe)
    ss = _f32(ss)
    if visible is not None:
        ss = mx.where(visible[:, None, None, :], ss, -mx.inf)  # a row always sees its current token
    parts = [sp, ss] if sinks is None else [sp, ss, mx.broadcast_to(sinks, ss.shape[:-1] + (1,))]
    e, total = _exp_part(mx.concatenate(parts, axis=-1))  # unnormalised: divide the output instead
    split = sp.shape[-1]
    o = _f32(e[..., :split].astype(vals_p.dtype) @ vals_p)
    return (o + _f32(e[..., split : split + ss.shape[-1]].astype(vals_s.dtype) @ vals_s)) / total


# ---- split --------------------------------------------------------------------------------------
def _split(layer, lay, q, q_pe, ks, vs, visible, sinks) -> mx.array:
    """Suffix and prompt parts apart, merged by their maxima and sums (any prompt length)."""
    s, vals = _scores(q, ks, vs, q_pe)
    if visible is not None:
        s = mx.where(visible[:, None, None, :], s, -mx.inf)  # a row always sees its current token
    suffix = _weigh_part(s, vals)

    # Prompt part: all rows of a request at once against its prompt KV.
    parts = [_prompt_part(layer, g, q, q_pe) for g in lay.groups]
    prompt = parts[0] if len(parts) == 1 else [mx.concatenate(x, axis=0) for x in zip(*parts)]
    if lay.inverse is not None:
        prompt = [x[lay.inverse] for x in prompt]
    if sinks is None:
        return _compiled(_merge)(*prompt, *suffix)
    return _compiled(_merge_sinks)(*prompt, *suffix, sinks)  # one extra logit per head, no value


def _prompt_part(layer, g, q: mx.array, q_pe: Optional[mx.array]) -> list[mx.array]:
    """_weigh of the group's rows against its prompt KV, in row layout (m, kv_heads, rep, .)."""
    kp, vp, first = _prompt(layer, g)
    _, kv_heads, rep, dim = q.shape

    def fold(x):  # (m, kvh, rep, d) -> (1, kvh, rep*m, d): the group's rows as query positions
        x = x if g.positions is None else x[g.positions]
        return x.transpose(1, 2, 0, 3).reshape(1, kv_heads, -1, x.shape[-1])

    m = q.shape[0] if g.positions is None else g.positions.shape[0]
    s, vals = _scores(fold(q), kp, vp, None if q_pe is None else fold(q_pe))
    s = _prompt_window(layer, g, s, first, kp.shape[2])
    # Unfolding is a free reshape and a transposed view: the merge reads it strided.
    return [x.reshape(kv_heads, rep, m, -1).transpose(2, 0, 1, 3) for x in _weigh_part(s, vals)]


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

"""In-graph token statistics: sampling, top-1/top-2 and entropy, for a batch of rows.

Everything here builds MLX graph nodes; nothing reads values back to the host.
One call returns a (B, 9) float32 array (see `STAT_FIELDS`) so the engine reads
all per-row statistics with a single transfer.

Randomness is per sequence, never per batch: a sequence has a 64-bit key (from
its request's seed and id, or from its parent's key and the branch step: see
`request_key`, `sequence_key`, `child_key`), and the Gumbel noise of token v at
step t is a counter-based hash of (key, t, v): the (key, t) half on the host
(`row_seeds`), the rest in the graph. A row's
sample therefore depends only on its own logits, key and step, not on which
other rows share the pass.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import IntEnum
from functools import partial
from typing import Optional, Sequence

import mlx.core as mx
import numpy as np

from eager_mlx.config import SamplingConfig
from eager_mlx.engine import fastmath

__all__ = [
    "STAT_FIELDS",
    "Stat",
    "RowSampling",
    "token_stats",
    "entropy",
    "top_candidates",
    "request_key",
    "sequence_key",
    "child_key",
    "row_seeds",
    "gumbel_noise",
    "infinite_before_format_3",
    "CANDIDATES",
    "WIDE_CANDIDATES",
]

# Column order of the array returned by token_stats.
class Stat(IntEnum):
    """Columns of the array token_stats returns (declared once: the engine reads them by these names)."""

    TOKEN = 0  # the sampled token
    TOP1 = 1
    TOP2 = 2
    ENTROPY = 3
    LP_TOKEN = 4  # temperature-1 log-probabilities
    LP_TOP1 = 5
    LP_TOP2 = 6
    ALT = 7  # the second Gumbel-max token (the sampled one excluded): a sample without replacement
    LP_ALT = 8
    CUT = 9  # 1 where a top-p row's nucleus reached past its candidates: its draw is not exact (see below)


STAT_FIELDS = tuple(s.name.lower() for s in Stat)

# top-k / top-p sample among this many most probable tokens (more if the row's top_k is larger).
# The top-p mass is measured against the full vocabulary, so the nucleus is exact unless these
# tokens hold less than top_p: then the CUT column says so, and the engine samples that row again
# with WIDE_CANDIDATES, then if need be the whole vocabulary (`RowSampling.from_configs(..., candidates=)`),
# under the same noise (keyed on token ids), so every draw is from the exact nucleus.
CANDIDATES = 256
WIDE_CANDIDATES = 4096  # a 4096-wide selection is ~6x cheaper than sorting a 49k-150k vocabulary
_CHUNK = 64  # top_candidates: vocabulary chunk size (at most)


# ---- per-sequence keys (host side, stable across processes and Python runs) ------------------
def _digest(*parts: object) -> int:
    blob = ":".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little")


def request_key(seed: int, request_id: Optional[str] = None) -> int:
    """A request's 64-bit key: from its own seed alone, or (request_id given) from the engine's seed and the id."""
    return _digest("request", seed) if request_id is None else _digest("engine", seed, request_id)


def sequence_key(request: int, index: int) -> int:
    """Key of a request's sequence that has no parent (sequence 0, or each row of parallel sampling)."""
    return _digest("sequence", request, index)


def child_key(parent: int, step: int) -> int:
    """Key of the child forked from `parent` at generation step `step` (it differs from the parent's)."""
    return _digest("child", parent, step)


# ---- in-graph counter-based noise ------------------------------------------------------------
_GOLDEN = 0x9E3779B9


def _fmix32(h: mx.array) -> mx.array:
    """murmur3's finaliser: a bijective mix of uint32 (multiplications wrap mod 2**32)."""
    h = h ^ (h >> 16)
    h = h * 0x85EBCA6B
    h = h ^ (h >> 13)
    h = h * 0xC2B2AE35
    return h ^ (h >> 16)


def _np_fmix32(h: np.ndarray) -> np.ndarray:
    """_fmix32 on the host (numpy's uint32 arithmetic wraps the same way)."""
    h = h ^ (h >> 16)
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _np_row_seeds(keys: Sequence[int], steps: Sequence[int]) -> np.ndarray:
    k = np.array(keys, dtype=np.uint64)
    h = _np_fmix32(np.array(steps, dtype=np.int64).astype(np.uint32) * np.uint32(_GOLDEN) + np.uint32(0x7F4A7C15))
    h = _np_fmix32(h ^ (k & 0xFFFFFFFF).astype(np.uint32))
    return _np_fmix32(h ^ (k >> np.uint64(32)).astype(np.uint32))


def row_seeds(keys: Sequence[int], steps: Sequence[int]) -> mx.array:
    """(B,) uint32: a hash of each row's 64-bit key and its generation step, computed on the host
    (no graph nodes per step)."""
    return mx.array(_np_row_seeds(keys, steps))


def infinite_before_format_3(keys: Sequence[int], steps: Sequence[int], token_ids: np.ndarray) -> np.ndarray:
    """(B, T) bool: whether token `token_ids[b, t]` had infinite noise at row b's (key, step) under store formats
    1-2 (its hash's top 24 bits all set: the uniform rounded to 1.0, see `uniform`); such a token, if allowed,
    won that draw. Host-side, the same hash as `_noise`."""
    seeds = _np_row_seeds(keys, steps)[:, None]
    hashed = _np_fmix32(np.asarray(token_ids, dtype=np.uint32) * np.uint32(_GOLDEN))
    return (_np_fmix32(_np_fmix32(seeds ^ hashed) + seeds) >> 8) == 0xFFFFFF


def _hash_ids(token_ids: mx.array) -> mx.array:
    return _fmix32(token_ids.astype(mx.uint32) * _GOLDEN)


# The largest float32 below 1. From 2**23 on, k + 0.5 rounds to an even integer in float32, so the top
# 24-bit k gave u = 1.0 exactly and infinite noise: that token won whatever its probability.
_BELOW_ONE = 1.0 - 2.0**-24


def uniform(h: mx.array) -> mx.array:
    """uint32 hashes -> float32 uniforms in (0, 1), from their top 24 bits (never 0, never 1)."""
    return mx.minimum(((h >> 8).astype(mx.float32) + 0.5) * (2.0**-24), _BELOW_ONE)


def _noise(seeds: mx.array, hashed_ids: mx.array) -> mx.array:
    h = fastmath.materialize(_fmix32(_fmix32(seeds ^ hashed_ids) + seeds))
    return -mx.log(fastmath.materialize(-mx.log(fastmath.materialize(uniform(h)))))


@partial(mx.compile, shapeless=True)
def _gumbel(seeds: mx.array, token_ids: mx.array) -> mx.array:
    return _noise(seeds, _hash_ids(token_ids))


def gumbel_noise(seeds: mx.array, token_ids: mx.array) -> mx.array:
    """Gumbel(0, 1) noise for token ids (B, C) or (1, C) of rows with `seeds` (B,): a pure function of both."""
    return _gumbel(seeds[:, None], token_ids.astype(mx.uint32))


_VOCAB_HASHES: dict[int, mx.array] = {}


def _vocabulary_hashes(vocab: int) -> mx.array:
    """(1, vocab) uint32: the per-token half of the noise hash, the same for every row and step."""
    if vocab not in _VOCAB_HASHES:
        _VOCAB_HASHES[vocab] = _hash_ids(mx.arange(vocab)[None])
        mx.eval(_VOCAB_HASHES[vocab])
    return _VOCAB_HASHES[vocab]


@partial(mx.compile, shapeless=True)
def _gumbel_max(tempered: mx.array, seeds: mx.array, hashed_ids: mx.array) -> mx.array:
    """argmax(tempered + gumbel noise) per row: the Gumbel-max sample over the whole vocabulary."""
    return mx.argmax(tempered + _noise(seeds, hashed_ids), axis=-1)


# ---- per-row settings ------------------------------------------------------------------------
@dataclass(frozen=True)
class RowSampling:
    """Per-row sampling parameters for one batch, as (B, 1) arrays, plus which paths are needed.

    Every choice is per row (a row's sample never depends on the other rows' settings):
    rows with top-k or top-p sample among their candidates, the others over the whole
    vocabulary.
    """

    temperature: mx.array
    top_p: mx.array
    limit: mx.array  # int32: candidates a filtered row may take (its top_k, else CANDIDATES)
    min_p: mx.array
    greedy: mx.array  # bool (B,): temperature == 0
    filtered: mx.array  # bool (B,): top_k or top_p is on
    open_nucleus: mx.array  # bool (B, 1): top-p without top-k (its candidates may not hold the nucleus)
    any_filtered: bool
    any_unfiltered: bool
    use_top_p: bool
    use_min_p: bool
    any_greedy: bool
    width: int  # candidates sorted per row: enough for every filtered row

    @classmethod
    def from_configs(cls, configs: Sequence[SamplingConfig], candidates: int = CANDIDATES) -> "RowSampling":
        """The batch's rows. A top-p row without top-k samples among its `candidates` most probable tokens
        (the vocabulary's size or more: all of them, exact whatever the nucleus, slower)."""
        temps = [c.temperature for c in configs]
        filtered = [c.top_k > 0 or c.top_p < 1.0 for c in configs]
        limits = [c.top_k if c.top_k > 0 else candidates for c in configs]
        col = lambda xs, dt=mx.float32: mx.array(xs, dtype=dt)[:, None]  # noqa: E731
        return cls(
            temperature=col([max(t, 1e-6) for t in temps]),
            top_p=col([c.top_p for c in configs]),
            limit=col(limits, mx.int32),
            min_p=col([c.min_p for c in configs]),
            greedy=mx.array([t == 0 for t in temps]),
            filtered=mx.array(filtered),
            open_nucleus=col([c.top_k == 0 and c.top_p < 1.0 for c in configs], mx.bool_),
            any_filtered=any(filtered),
            any_unfiltered=not all(filtered),
            use_top_p=any(c.top_p < 1.0 for c in configs),
            use_min_p=any(c.min_p > 0 for c in configs),
            any_greedy=any(t == 0 for t in temps),
            width=max([lim for lim, f in zip(limits, filtered) if f], default=0),
        )

    def arrays(self) -> tuple[mx.array, ...]:
        """The per-row arrays (the fields before `any_filtered`)."""
        return self.temperature, self.top_p, self.limit, self.min_p, self.greedy, self.filtered, self.open_nucleus

    def kind(self) -> tuple:
        """The plain-value fields (from `any_filtered` on): which paths the graph needs."""
        return self.any_filtered, self.any_unfiltered, self.use_top_p, self.use_min_p, self.any_greedy, self.width


def _renormalised_entropy(x: mx.array, peak: mx.array) -> mx.array:
    """Entropy of softmax(x) over the last axis; `peak` (B, 1) is the row maximum of x."""
    x = x - fastmath.logsumexp(x, peak)
    return -(fastmath.exp(x) * x).sum(axis=-1)


def top_candidates(logits: mx.array, width: int) -> tuple[mx.array, mx.array]:
    """Each row's `width` largest logits, sorted descending, and their token ids: (B, width) each.

    Exact, without a partial sort of the whole vocabulary: the vocabulary is cut into chunks, and
    the `width` chunks with the largest maxima hold the `width` largest values (any other chunk's
    values are at most its maximum, which `width` elements of those chunks reach). So one max
    over the vocabulary, then a partial sort of the chunk maxima and of `width` chunks. Among
    equal values which ids are taken is unspecified (as with argpartition).
    """
    b, vocab = logits.shape
    chunk = 1
    while chunk < _CHUNK and width * chunk * 16 <= vocab:
        chunk *= 2
    if chunk < 4:  # a small vocabulary: the plain partial sort is as cheap
        idx = mx.argpartition(-logits, kth=width - 1, axis=-1)[:, :width]
    else:
        n = -(-vocab // chunk)
        x = logits if n * chunk == vocab else mx.pad(logits, [(0, 0), (0, n * chunk - vocab)], constant_values=-mx.inf)
        x = x.reshape(b, n, chunk)
        best = mx.argpartition(-x.max(axis=-1), kth=width - 1, axis=-1)[:, :width]  # (B, width) chunks
        ids = (best[:, :, None] * chunk + mx.arange(chunk, dtype=best.dtype)).reshape(b, -1)
        sub = mx.take_along_axis(x, best[:, :, None], axis=1).reshape(b, -1)
        idx = mx.take_along_axis(ids, mx.argpartition(-sub, kth=width - 1, axis=-1)[:, :width], axis=-1)
    vals = mx.take_along_axis(logits, idx, axis=-1)
    order = mx.argsort(-vals, axis=-1)
    return mx.take_along_axis(vals, order, axis=-1), mx.take_along_axis(idx, order, axis=-1)


def entropy(logits: mx.array, top_k: Optional[int]) -> mx.array:
    """Entropy in nats of each row's temperature-1 distribution (logits or log-probabilities).

    With ``top_k`` the K most probable tokens are renormalised first (the reference
    code's rule, max ln K); with None the whole vocabulary is used. token_stats gives
    bitwise the same values (same ops on the same sorted values), whatever the batch.
    """
    logits = logits.astype(mx.float32)
    if top_k is not None and top_k < logits.shape[-1]:
        top = top_candidates(logits, top_k)[0]
        return _renormalised_entropy(top, top[:, :1])
    return _renormalised_entropy(logits, logits.max(axis=-1, keepdims=True))


def _min_p_mask(tempered: mx.array, s: RowSampling) -> mx.array:
    """Keep tokens with probability >= min_p * the top one (rows with min_p 0 keep all)."""
    top = mx.max(tempered, axis=-1, keepdims=True)
    return (s.min_p <= 0) | (tempered >= top + mx.log(mx.maximum(s.min_p, 1e-30)))


def _sample_candidates(cand_t: mx.array, cand_idx: mx.array, probs_before: Optional[mx.array], s: RowSampling,
                       seeds: mx.array, alt: bool) -> tuple[mx.array, Optional[mx.array]]:
    """Sample among a row's candidates left by top-k, top-p and min-p.

    `cand_t` (B, C) are tempered logits sorted descending, `cand_idx` their token ids,
    `probs_before` the tempered mass strictly above each candidate (None: no row uses top-p).
    """
    keep = mx.arange(cand_t.shape[-1])[None] < s.limit
    if probs_before is not None:
        keep = keep & ((probs_before < s.top_p) | (s.top_p >= 1.0))  # always keeps the first
    if s.use_min_p:
        keep = keep & _min_p_mask(cand_t, s)
    noisy = mx.where(keep, cand_t + gumbel_noise(seeds, cand_idx), -mx.inf)
    return _gumbel_pick(noisy, cand_idx, alt)


def _gumbel_pick(noisy: mx.array, ids: Optional[mx.array], alt: bool) -> tuple[mx.array, Optional[mx.array]]:
    """The argmax token of `noisy` (B, C) (`ids`: the token of each column, None: the column itself) and, with
    `alt`, the best token after it (-1 where no other column is finite): a draw without replacement."""
    best = mx.argmax(noisy, axis=-1)
    token = best if ids is None else mx.take_along_axis(ids, best[:, None], axis=-1)[:, 0]
    if not alt:
        return token, None
    rest = mx.where(mx.arange(noisy.shape[-1])[None] == best[:, None], -mx.inf, noisy)
    second = mx.argmax(rest, axis=-1)
    other = second if ids is None else mx.take_along_axis(ids, second[:, None], axis=-1)[:, 0]
    finite = mx.take_along_axis(rest, second[:, None], axis=-1)[:, 0] > -mx.inf
    return token, mx.where(finite, other.astype(mx.int32), -1)


def _sample_vocabulary(tempered: mx.array, s: RowSampling, seeds: mx.array, hashed: mx.array,
                       alt: bool) -> tuple[mx.array, Optional[mx.array]]:
    """Gumbel-max over the whole vocabulary (with min-p where a row sets it); `hashed` from _vocabulary_hashes."""
    if not s.use_min_p and not alt:
        return _gumbel_max(tempered, seeds[:, None], hashed), None
    noisy = tempered + _noise(seeds[:, None], hashed)
    if s.use_min_p:
        noisy = mx.where(_min_p_mask(tempered, s), noisy, -mx.inf)
    return _gumbel_pick(noisy, None, alt)


def token_stats(
    logits: mx.array,
    sampling: RowSampling,
    seeds: mx.array,
    entropy_top_k: Optional[int] = 20,
    alt: bool = False,
) -> mx.array:
    """Sample one token per row and compute its statistics; returns (B, len(Stat)) float32 (`Stat` columns).

    Entropy, top-1/top-2 and log-probabilities come from the temperature-1
    distribution (as the reference reads vLLM's raw logprobs); the sampled token
    comes from the tempered, filtered one (temperature first, then top-k / top-p /
    min-p, the vLLM order) by Gumbel-max with each row's own noise (`seeds`, (B,)
    uint32 from `row_seeds`). Greedy rows (temperature 0) take top-1 exactly.
    With `alt`, ALT is the runner-up under the same noise (a second draw without
    replacement, for the sampled branch rules); where the filters leave no second
    token, and without `alt`, ALT is the most probable token other than the sampled one.
    CUT is 1 where a top-p row's candidates hold less than its top_p: its draw stopped at them, so
    sample that row again with more `candidates` (RowSampling.from_configs; the engine does).

    Cost beyond sampling: one max and one exp pass over the vocabulary (top_candidates, the
    log-sum-exp); the candidates give top-1/top-2, the top-K entropy and the filters. The graph
    is compiled once per batch shape and setting kind (fewer, fused nodes per step).
    """
    vocab = logits.shape[-1]
    key = (sampling.kind(), entropy_top_k, fastmath.uses_exp2(), alt)
    fn = _STATS.get(key)
    if fn is None:
        fn = _STATS[key] = mx.compile(partial(_token_stats, kind=key[0], entropy_top_k=entropy_top_k, alt=alt))
    return fn(logits.astype(mx.float32), *sampling.arrays(), seeds, _vocabulary_hashes(vocab))


_STATS: dict = {}


def _sampled(logits, cand, cand_idx, sampling, seeds, hashed, alt):
    """(token, runner-up or None, cut or None) per row: see token_stats."""
    tempered = logits / sampling.temperature
    token = other = cut = None
    if sampling.any_unfiltered:
        token, other = _sample_vocabulary(tempered, sampling, seeds, hashed, alt)
    if sampling.any_filtered:
        cand_t = cand / sampling.temperature
        before = None
        if sampling.use_top_p:
            probs = fastmath.exp(cand_t - fastmath.logsumexp(tempered, cand_t[:, :1]))
            mass = mx.cumsum(probs, axis=-1)
            before = mass - probs  # mass strictly above each token
            held = mx.take_along_axis(mass, mx.minimum(sampling.limit, mass.shape[-1]) - 1, axis=-1)
            short = sampling.open_nucleus & (sampling.limit < logits.shape[-1]) & (held < sampling.top_p)
            cut = short[:, 0]  # the nucleus goes on past the row's candidates
        picked, picked_other = _sample_candidates(cand_t, cand_idx, before, sampling, seeds, alt)
        token = picked if token is None else mx.where(sampling.filtered, picked, token)
        if alt:
            other = picked_other if other is None else mx.where(sampling.filtered, picked_other, other)
    if sampling.any_greedy:
        token = mx.where(sampling.greedy, cand_idx[:, 0], token)
        if alt:
            other = mx.where(sampling.greedy, -1, other.astype(mx.int32))
        if cut is not None:
            cut = cut & ~sampling.greedy
    return token, other, cut


def _token_stats(logits, *arrays, kind, entropy_top_k, alt):
    *params, seeds, hashed = arrays
    sampling = RowSampling(*params, *kind)
    vocab = logits.shape[-1]
    width = min(max(entropy_top_k or 2, 2, sampling.width), vocab)
    cand, cand_idx = top_candidates(logits, width)  # sorted descending
    peak = cand[:, :1]
    lse = fastmath.logsumexp(logits, peak)
    top1, top2 = cand_idx[:, 0], cand_idx[:, 1]
    token, other, cut = _sampled(logits, cand, cand_idx, sampling, seeds, hashed, alt)
    fallback = mx.where(token == top1, top2, top1)  # the most probable token besides the sampled one
    other = fallback if other is None else mx.where(other < 0, fallback.astype(mx.int32), other)
    lp = mx.take_along_axis(logits, mx.stack([token, other], axis=1), axis=-1) - lse

    if entropy_top_k is None or entropy_top_k >= vocab:
        h = _renormalised_entropy(logits, peak)
    else:
        h = _renormalised_entropy(cand[:, :entropy_top_k], peak)
    # The columns in Stat order: token, top-1, top-2, entropy, three log-probabilities, the runner-up and its,
    # whether the nucleus was cut.
    f32 = mx.float32
    cut = mx.zeros_like(h) if cut is None else cut.astype(f32)
    return mx.concatenate([token[:, None].astype(f32), cand_idx[:, :2].astype(f32), h[:, None],
                           lp[:, :1], cand[:, :2] - lse, other[:, None].astype(f32), lp[:, 1:], cut[:, None]],
                          axis=1)

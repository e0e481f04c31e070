"""In-graph token statistics: sampling, top-1/top-2 and entropy, for a batch of rows.

Everything here builds MLX graph nodes; nothing reads values back to the host.
One call returns a (B, 7) float32 array (see `STAT_FIELDS`) so the engine reads
all per-row statistics with a single transfer.

Randomness is per sequence, never per batch: a sequence has a 64-bit key (from
its request's seed and id, or from its parent's key and the branch step: see
`request_key`, `sequence_key`, `child_key`), and the Gumbel noise of token v at
step t is a counter-based hash of (key, t, v) computed in the graph. A row's
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

from eager_mlx.config import SamplingConfig

__all__ = [
    "STAT_FIELDS",
    "Stat",
    "RowSampling",
    "token_stats",
    "entropy",
    "request_key",
    "sequence_key",
    "child_key",
    "key_array",
    "row_seeds",
    "gumbel_noise",
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


STAT_FIELDS = tuple(s.name.lower() for s in Stat)

# top-k / top-p sample among this many most probable tokens (more if the row's top_k is larger).
# The top-p mass is measured against the full vocabulary, so the nucleus is exact unless these
# tokens hold less than top_p (then it is cut at them).
_CANDIDATES = 256


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


def key_array(keys: Sequence[int]) -> mx.array:
    """(B, 2) uint32: the low and high halves of each 64-bit key."""
    return mx.array([[k & 0xFFFFFFFF, k >> 32] for k in keys], dtype=mx.uint32)


# ---- in-graph counter-based noise ------------------------------------------------------------
_GOLDEN = 0x9E3779B9


def _fmix32(h: mx.array) -> mx.array:
    """murmur3's finaliser: a bijective mix of uint32 (multiplications wrap mod 2**32)."""
    h = h ^ (h >> 16)
    h = h * 0x85EBCA6B
    h = h ^ (h >> 13)
    h = h * 0xC2B2AE35
    return h ^ (h >> 16)


def row_seeds(keys: mx.array, steps: mx.array) -> mx.array:
    """(B,) uint32: a hash of each row's key (B, 2) uint32 and its generation step (B,)."""
    h = _fmix32(steps.astype(mx.uint32) * _GOLDEN + 0x7F4A7C15)
    h = _fmix32(h ^ keys[:, 0])
    return _fmix32(h ^ keys[:, 1])


@partial(mx.compile, shapeless=True)
def _gumbel(seeds: mx.array, token_ids: mx.array) -> mx.array:
    h = _fmix32(_fmix32(seeds ^ _fmix32(token_ids * _GOLDEN)) + seeds)
    u = ((h >> 8).astype(mx.float32) + 0.5) * (2.0**-24)  # in (0, 1)
    return -mx.log(-mx.log(u))


def gumbel_noise(seeds: mx.array, token_ids: mx.array) -> mx.array:
    """Gumbel(0, 1) noise for token ids (B, C) or (1, C) of rows with `seeds` (B,): a pure function of both."""
    return _gumbel(seeds[:, None], token_ids.astype(mx.uint32))


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
    limit: mx.array  # int32: candidates a filtered row may take (its top_k, else _CANDIDATES)
    min_p: mx.array
    greedy: mx.array  # bool (B,): temperature == 0
    filtered: mx.array  # bool (B,): top_k or top_p is on
    any_filtered: bool
    any_unfiltered: bool
    use_top_p: bool
    use_min_p: bool
    any_greedy: bool
    width: int  # candidates sorted per row: enough for every filtered row

    @classmethod
    def from_configs(cls, configs: Sequence[SamplingConfig]) -> "RowSampling":
        temps = [c.temperature for c in configs]
        filtered = [c.top_k > 0 or c.top_p < 1.0 for c in configs]
        limits = [c.top_k if c.top_k > 0 else _CANDIDATES for c in configs]
        col = lambda xs, dt=mx.float32: mx.array(xs, dtype=dt)[:, None]  # noqa: E731
        return cls(
            temperature=col([max(t, 1e-6) for t in temps]),
            top_p=col([c.top_p for c in configs]),
            limit=col(limits, mx.int32),
            min_p=col([c.min_p for c in configs]),
            greedy=mx.array([t == 0 for t in temps]),
            filtered=mx.array(filtered),
            any_filtered=any(filtered),
            any_unfiltered=not all(filtered),
            use_top_p=any(c.top_p < 1.0 for c in configs),
            use_min_p=any(c.min_p > 0 for c in configs),
            any_greedy=any(t == 0 for t in temps),
            width=max([lim for lim, f in zip(limits, filtered) if f], default=0),
        )


def _renormalised_entropy(x: mx.array) -> mx.array:
    x = x - mx.logsumexp(x, axis=-1, keepdims=True)
    return -(mx.exp(x) * x).sum(axis=-1)


def entropy(logits: mx.array, top_k: Optional[int]) -> mx.array:
    """Entropy in nats of each row's temperature-1 distribution (logits or log-probabilities).

    With ``top_k`` the K most probable tokens are renormalised first (the reference
    code's rule, max ln K); with None the whole vocabulary is used. token_stats gives
    bitwise the same values (same ops on the same sorted values), whatever the batch.
    """
    if top_k is not None:
        logits = -mx.sort(-mx.topk(logits, top_k, axis=-1), axis=-1)
    return _renormalised_entropy(logits)


def _min_p_mask(tempered: mx.array, s: RowSampling) -> mx.array:
    """Keep tokens with probability >= min_p * the top one (rows with min_p 0 keep all)."""
    top = mx.max(tempered, axis=-1, keepdims=True)
    return (s.min_p <= 0) | (tempered >= top + mx.log(mx.maximum(s.min_p, 1e-30)))


def _sample_candidates(cand_t: mx.array, cand_idx: mx.array, probs_before: Optional[mx.array], s: RowSampling,
                       seeds: mx.array) -> mx.array:
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
    return mx.take_along_axis(cand_idx, mx.argmax(noisy, axis=-1)[:, None], axis=-1)[:, 0]


def _sample_vocabulary(tempered: mx.array, s: RowSampling, seeds: mx.array) -> mx.array:
    """Gumbel-max over the whole vocabulary (with min-p where a row sets it)."""
    noisy = tempered + gumbel_noise(seeds, mx.arange(tempered.shape[-1])[None])
    if s.use_min_p:
        noisy = mx.where(_min_p_mask(tempered, s), noisy, -mx.inf)
    return mx.argmax(noisy, axis=-1)


def token_stats(
    logits: mx.array,
    sampling: RowSampling,
    seeds: mx.array,
    entropy_top_k: Optional[int] = 20,
) -> mx.array:
    """Sample one token per row and compute its statistics; returns (B, 7) float32.

    Entropy, top-1/top-2 and log-probabilities come from the temperature-1
    distribution (as the reference reads vLLM's raw logprobs); the sampled token
    comes from the tempered, filtered one (temperature first, then top-k / top-p /
    min-p, the vLLM order) by Gumbel-max with each row's own noise (`seeds`, (B,)
    uint32 from `row_seeds`). Greedy rows (temperature 0) take top-1 exactly.

    Cost: one partial sort (argpartition) gives the candidates for top-1/top-2, the
    top-K entropy and the filters, so none of them sorts the whole vocabulary.
    """
    logits = logits.astype(mx.float32)
    vocab = logits.shape[-1]
    lse = mx.logsumexp(logits, axis=-1, keepdims=True)
    width = min(max(entropy_top_k or 2, 2, sampling.width), vocab)
    cand_idx = mx.argpartition(-logits, kth=width - 1, axis=-1)[:, :width]
    cand = mx.take_along_axis(logits, cand_idx, axis=-1)
    order = mx.argsort(-cand, axis=-1)
    cand_idx = mx.take_along_axis(cand_idx, order, axis=-1)
    cand = mx.take_along_axis(cand, order, axis=-1)  # sorted descending
    top1, top2 = cand_idx[:, 0], cand_idx[:, 1]
    lp_top1, lp_top2 = cand[:, 0] - lse[:, 0], cand[:, 1] - lse[:, 0]

    tempered = logits / sampling.temperature
    token = None
    if sampling.any_unfiltered:
        token = _sample_vocabulary(tempered, sampling, seeds)
    if sampling.any_filtered:
        cand_t = cand / sampling.temperature
        before = None
        if sampling.use_top_p:
            probs = mx.exp(cand_t - mx.logsumexp(tempered, axis=-1, keepdims=True))
            before = mx.cumsum(probs, axis=-1) - probs  # mass strictly above each token
        picked = _sample_candidates(cand_t, cand_idx, before, sampling, seeds)
        token = picked if token is None else mx.where(sampling.filtered, picked, token)
    if sampling.any_greedy:
        token = mx.where(sampling.greedy, top1, token)
    lp_token = mx.take_along_axis(logits, token[:, None], axis=-1)[:, 0] - lse[:, 0]

    h = entropy(logits, None) if entropy_top_k is None else _renormalised_entropy(cand[:, :entropy_top_k])
    cols = {Stat.TOKEN: token, Stat.TOP1: top1, Stat.TOP2: top2, Stat.ENTROPY: h, Stat.LP_TOKEN: lp_token,
            Stat.LP_TOP1: lp_top1, Stat.LP_TOP2: lp_top2}
    return mx.stack([cols[c].astype(mx.float32) for c in Stat], axis=1)

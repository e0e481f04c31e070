"""In-graph token statistics: sampling, top-1/top-2 and entropy, for a batch of rows.

Everything here builds MLX graph nodes; nothing reads values back to the host.
One call returns a (B, 7) float32 array (see `STAT_FIELDS`) so the engine reads
all per-row statistics with a single transfer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import mlx.core as mx

from eager_mlx.config import SamplingConfig

__all__ = ["STAT_FIELDS", "RowSampling", "token_stats", "entropy"]

# Column order of the array returned by token_stats.
STAT_FIELDS = ("token", "top1", "top2", "entropy", "lp_token", "lp_top1", "lp_top2")


@dataclass(frozen=True)
class RowSampling:
    """Per-row sampling parameters for one batch, as (B, 1) arrays, plus which filters are on."""

    temperature: mx.array
    top_p: mx.array
    top_k: mx.array
    min_p: mx.array
    greedy: mx.array  # bool (B,): temperature == 0
    use_top_p: bool
    use_top_k: bool
    use_min_p: bool
    any_greedy: bool
    max_top_k: int

    @classmethod
    def from_configs(cls, configs: Sequence[SamplingConfig]) -> "RowSampling":
        temps = [c.temperature for c in configs]
        col = lambda xs, dt=mx.float32: mx.array(xs, dtype=dt)[:, None]  # noqa: E731
        return cls(
            temperature=col([max(t, 1e-6) for t in temps]),
            top_p=col([c.top_p for c in configs]),
            top_k=col([c.top_k for c in configs], mx.int32),
            min_p=col([c.min_p for c in configs]),
            greedy=mx.array([t == 0 for t in temps]),
            use_top_p=any(c.top_p < 1.0 for c in configs),
            use_top_k=any(c.top_k > 0 for c in configs),
            use_min_p=any(c.min_p > 0 for c in configs),
            any_greedy=any(t == 0 for t in temps),
            max_top_k=max(c.top_k for c in configs),
        )


def entropy(logprobs: mx.array, top_k: Optional[int]) -> mx.array:
    """Entropy in nats of each row of temperature-1 log-probabilities.

    With ``top_k`` the K most probable tokens are renormalised first (the reference
    code's rule, max ln K); with None the whole vocabulary is used.
    """
    if top_k is not None:
        logprobs = mx.topk(logprobs, top_k, axis=-1)
        logprobs = logprobs - mx.logsumexp(logprobs, axis=-1, keepdims=True)
    return -(mx.exp(logprobs) * logprobs).sum(axis=-1)


# top-k / top-p sample among this many most probable tokens. The top-p mass is measured
# against the full vocabulary, so the nucleus is exact unless these tokens hold less than
# top_p (then it is cut at them).
_CANDIDATES = 256


def _sample_candidates(cand_logits: mx.array, cand_idx: mx.array, s: RowSampling, key: mx.array) -> mx.array:
    """Sample among the candidates left by top-k and min-p (top-p was applied by the caller).

    `cand_logits` (B, C) are tempered logits sorted descending, `cand_idx` their token ids.
    """
    neg_inf = mx.array(-float("inf"), cand_logits.dtype)
    width = cand_logits.shape[-1]
    keep = mx.ones(cand_logits.shape, dtype=mx.bool_)
    if s.use_top_k:
        k = mx.where(s.top_k > 0, s.top_k, width)
        keep = keep & (mx.arange(width)[None] < k)
    if s.use_min_p:
        keep = keep & (cand_logits >= cand_logits[:, :1] + mx.log(mx.maximum(s.min_p, 1e-30)))
    return mx.take_along_axis(
        cand_idx, mx.random.categorical(mx.where(keep, cand_logits, neg_inf), axis=-1, key=key)[:, None], axis=-1
    )[:, 0]


def token_stats(
    logits: mx.array,
    sampling: RowSampling,
    key: mx.array,
    entropy_top_k: Optional[int] = 20,
) -> mx.array:
    """Sample one token per row and compute its statistics; returns (B, 7) float32.

    Entropy, top-1/top-2 and log-probabilities come from the temperature-1
    distribution (as the reference reads vLLM's raw logprobs); the sampled token
    comes from the tempered, filtered one (temperature first, then top-k / top-p /
    min-p, the vLLM order). Each row draws its own noise.

    Cost: one partial sort (argpartition) gives the candidates for top-1/top-2, the
    top-K entropy and the filters, so none of them sorts the whole vocabulary.
    """
    logits = logits.astype(mx.float32)
    vocab = logits.shape[-1]
    lse = mx.logsumexp(logits, axis=-1, keepdims=True)
    filtered = sampling.use_top_k or sampling.use_top_p
    width = max(entropy_top_k or 2, 2)
    if filtered:
        width = max(width, _CANDIDATES, sampling.max_top_k)
    width = min(width, vocab)
    cand_idx = mx.argpartition(-logits, kth=width - 1, axis=-1)[:, :width]
    cand = mx.take_along_axis(logits, cand_idx, axis=-1)
    order = mx.argsort(-cand, axis=-1)
    cand_idx = mx.take_along_axis(cand_idx, order, axis=-1)
    cand = mx.take_along_axis(cand, order, axis=-1)  # sorted descending
    top1, top2 = cand_idx[:, 0], cand_idx[:, 1]
    lp_top1, lp_top2 = cand[:, 0] - lse[:, 0], cand[:, 1] - lse[:, 0]

    tempered = logits / sampling.temperature
    if filtered:
        cand_t = cand / sampling.temperature
        if sampling.use_top_p:
            probs = mx.exp(cand_t - mx.logsumexp(tempered, axis=-1, keepdims=True))
            before = mx.cumsum(probs, axis=-1) - probs  # mass strictly above each token
            cand_t = mx.where(before < sampling.top_p, cand_t, -mx.inf)  # always keeps the first
        token = _sample_candidates(cand_t, cand_idx, sampling, key)
    else:
        if sampling.use_min_p:
            top = mx.max(tempered, axis=-1, keepdims=True)
            tempered = mx.where(tempered >= top + mx.log(mx.maximum(sampling.min_p, 1e-30)), tempered, -mx.inf)
        token = mx.random.categorical(tempered, axis=-1, key=key)
    if sampling.any_greedy:
        token = mx.where(sampling.greedy, top1, token)
    lp_token = mx.take_along_axis(logits, token[:, None], axis=-1)[:, 0] - lse[:, 0]

    if entropy_top_k is None:
        h = entropy(logits - lse, None)
    else:
        top = cand[:, :entropy_top_k]
        top = top - mx.logsumexp(top, axis=-1, keepdims=True)
        h = -(mx.exp(top) * top).sum(axis=-1)
    cols = [token, top1, top2, h, lp_token, lp_top1, lp_top2]
    return mx.stack([c.astype(mx.float32) for c in cols], axis=1)

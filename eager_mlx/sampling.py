"""In-graph token statistics: sampling, top-1/top-2 and entropy, for a batch of rows.

Everything here builds MLX graph nodes; nothing reads values back to the host.
One call returns a (B, 7) float32 array (see `STAT_FIELDS`) so the engine reads
all per-row statistics with a single transfer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import mlx.core as mx

from .config import SamplingConfig

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


def _filter(tempered: mx.array, s: RowSampling) -> mx.array:
    """Mask tokens outside top-k / top-p / min-p of the *tempered* distribution (vLLM order)."""
    neg_inf = mx.array(-float("inf"), tempered.dtype)
    if s.use_top_k or s.use_top_p:
        desc = -mx.sort(-tempered, axis=-1)
        vocab = tempered.shape[-1]
        if s.use_top_k:
            k = mx.where(s.top_k > 0, mx.minimum(s.top_k, vocab), vocab)
            kth = mx.take_along_axis(desc, k - 1, axis=-1)
            tempered = mx.where(tempered >= kth, tempered, neg_inf)
            desc = mx.where(mx.arange(vocab)[None] < k, desc, neg_inf)
        if s.use_top_p:
            probs = mx.softmax(desc, axis=-1)
            before = mx.cumsum(probs, axis=-1) - probs  # mass strictly above each token
            keep = before < s.top_p  # always keeps the first token
            smallest_kept = mx.min(mx.where(keep, desc, mx.inf), axis=-1, keepdims=True)
            tempered = mx.where(tempered >= smallest_kept, tempered, neg_inf)
    if s.use_min_p:
        top = mx.max(tempered, axis=-1, keepdims=True)
        tempered = mx.where(tempered >= top + mx.log(mx.maximum(s.min_p, 1e-30)), tempered, neg_inf)
    return tempered


def token_stats(
    logits: mx.array,
    sampling: RowSampling,
    key: mx.array,
    entropy_top_k: Optional[int] = 20,
) -> mx.array:
    """Sample one token per row and compute its statistics; returns (B, 7) float32.

    Entropy, top-1/top-2 and log-probabilities come from the temperature-1
    distribution (as the reference reads vLLM's raw logprobs); the sampled token
    comes from the tempered, filtered one. Each row draws its own noise.
    """
    logits = logits.astype(mx.float32)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)

    top1 = mx.argmax(logprobs, axis=-1)
    lp_top1 = mx.take_along_axis(logprobs, top1[:, None], axis=-1)[:, 0]
    masked = mx.where(mx.arange(logprobs.shape[-1])[None] == top1[:, None], -mx.inf, logprobs)
    top2 = mx.argmax(masked, axis=-1)
    lp_top2 = mx.take_along_axis(logprobs, top2[:, None], axis=-1)[:, 0]

    tempered = _filter(logits / sampling.temperature, sampling)
    token = mx.random.categorical(tempered, axis=-1, key=key)
    if sampling.any_greedy:
        token = mx.where(sampling.greedy, top1, token)
    lp_token = mx.take_along_axis(logprobs, token[:, None], axis=-1)[:, 0]

    h = entropy(logprobs, entropy_top_k)
    cols = [token, top1, top2, h, lp_token, lp_top1, lp_top2]
    return mx.stack([c.astype(mx.float32) for c in cols], axis=1)

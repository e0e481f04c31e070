"""exp and log-sum-exp for the engine's hot paths (attention scores, the vocabulary's log-sum-exp).

MLX's CPU backend computes `mx.exp` about 3x slower than `mx.power(2, x)` (measured on x86 Linux,
mlx 0.32.4: 9.4 vs 3.3 ns per element), and both the attention over a long prompt and the
log-sum-exp over a 150k vocabulary are dominated by it. On the CPU, exp(x) is therefore computed
as 2 ** (x * log2(e)): within a few float32 ulps of `mx.exp` for the arguments used here (x <= 0
after subtracting a maximum). Other backends use `mx.exp`.
"""
from __future__ import annotations

import mlx.core as mx

__all__ = ["exp", "logsumexp", "materialize", "uses_exp2"]

_LOG2E = 1.4426950408889634


def uses_exp2() -> bool:
    """Whether exp() goes through exp2 now (the default device is the CPU)."""
    return mx.default_device() == mx.cpu


def exp(x: mx.array) -> mx.array:
    """e ** x, elementwise (through exp2 on the CPU, where it is faster)."""
    if uses_exp2():
        return mx.power(2.0, x * _LOG2E)
    return mx.exp(x)


def logsumexp(x: mx.array, peak: mx.array) -> mx.array:
    """log(sum(exp(x))) over the last axis (kept), given `peak` = the maximum of x over it (kept)."""
    return peak + mx.log(exp(x - peak).sum(axis=-1, keepdims=True))


def materialize(x: mx.array) -> mx.array:
    """x, written out on the CPU: a cut in a long fused elementwise chain.

    mx.compile fuses at most 11 elementwise ops deep and splits longer chains where it likes; on the
    CPU the Gumbel noise (about 30 ops) ran 1.5x slower split that way than cut at three chosen places.
    """
    return mx.contiguous(x) if uses_exp2() else x
